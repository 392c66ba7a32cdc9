"""A tiny base image with a shell, for builds and runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def base_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny base image with a shell: the host's dash, stty and readlink and the libraries they need,
    as a docker archive."""
    work = tmp_path_factory.mktemp("base")
    rootfs = work / "rootfs"
    tools = ["/bin/dash", "/bin/stty", "/bin/readlink"]  # (stty and readlink: what -t is seen by)
    libs = {line.split()[-2] if "=>" in line else line.split()[0] for tool in tools for line in _ldd(tool)}
    for f in [*tools, *sorted(lib for lib in libs if lib.startswith("/"))]:
        dst = rootfs / f.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(f), dst)
    os.symlink("dash", rootfs / "bin/sh")
    for d in ("dev", "proc", "sys"):  # (as every real base has them: RUN's mount points)
        (rootfs / d).mkdir()
    (rootfs / "etc").mkdir()
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n")
    (rootfs / "etc/group").write_text("root:x:0:\napp:x:1000:\n")
    tar = work / "rootfs.tar"
    with tarfile.open(tar, "w") as t:
        for p in sorted(rootfs.rglob("*")):
            t.add(p, arcname=str(p.relative_to(rootfs)), recursive=False)
    return tar


def _ldd(path: str) -> list[str]:
    out = subprocess.run(["ldd", path], check=True, capture_output=True, text=True, timeout=30).stdout
    return [line.strip() for line in out.splitlines() if "/" in line]
