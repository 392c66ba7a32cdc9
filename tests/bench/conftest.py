from __future__ import annotations

import os
import shutil

import pytest

from bench import impls as im

needs_root_fuse = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or os.geteuid() != 0 or shutil.which("fusermount3") is None,
    reason="needs root, /dev/fuse and fusermount3",
)


@pytest.fixture
def cleanup_mounts():
    """Unmount whatever a test mounted through bench.impls, whatever happened."""
    try:
        yield im.ACTIVE
    finally:
        im.cleanup_all()


def leftovers(path, exclude: tuple[int, ...] = ()) -> tuple[list[str], list[str]]:
    """Mounts (in /proc/mounts) and processes (by command line) that mention *path* (but *exclude*)."""
    p = os.fspath(path)
    with open("/proc/mounts") as f:
        mounts = [line.strip() for line in f if p in line]
    procs = []
    for ent in os.scandir("/proc"):
        if not ent.name.isdigit() or int(ent.name) in (os.getpid(), *exclude):
            continue
        try:
            with open(f"/proc/{ent.name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if p in cmd:
            procs.append(f"{ent.name}: {cmd[:200]}")
    return mounts, procs
