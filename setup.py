"""The compiled parts of strata (the rest is in pyproject.toml): the index builder's hot loops."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension(f"unionfs.{m}", [f"unionfs/{m}.pyx"]) for m in ("_scan", "_merge")], language_level=3
    )
)
