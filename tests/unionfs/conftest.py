from __future__ import annotations

import os
import shutil

import pytest

from .helpers import Mounts

needs_fuse = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or os.geteuid() != 0 or shutil.which("fusermount3") is None,
    reason="needs root, /dev/fuse and fusermount3",
)


@pytest.fixture
def mounts():
    m = Mounts()
    try:
        yield m
    finally:
        m.close()


def pytest_collection_modifyitems(config, items):
    """`slow` tests of this directory run only when asked for (-m slow or STRATA_SLOW=1)."""
    if "slow" in (config.option.markexpr or "") or os.environ.get("STRATA_SLOW"):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow or STRATA_SLOW=1")
    for item in items:
        if "slow" in item.keywords and "unionfs" in str(item.fspath):
            item.add_marker(skip)
