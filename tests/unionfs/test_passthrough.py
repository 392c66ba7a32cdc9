"""FUSE passthrough on a writable mount: the kernel reads and writes the upper layer's files itself,
the server sees no data request, and copy-up and the fallback without passthrough keep every byte."""

from __future__ import annotations

import mmap
import os
import re
import shutil
import subprocess
from pathlib import Path

import pyfuse3
import pytest

from .conftest import needs_fuse
from .helpers import OVERLAY, traced_overlay

pytestmark = [
    needs_fuse,
    pytest.mark.skipif(not getattr(pyfuse3, "passthrough_built", False), reason="pyfuse3 built without passthrough"),
]
MIB = 1 << 20
DATA_CALL = re.compile(r"^\d+\s+p(?:read|write)64\(.*, (\d+), \d+\)\s+= \d+$", re.M)


def _layers(tmp: Path) -> tuple[Path, Path, Path, Path]:
    lower, up, work, mp = (tmp / n for n in ("lower", "up", "work", "mnt"))
    for d in (lower, up, work, mp):
        d.mkdir()
    (lower / "big").write_bytes(os.urandom(4 * MIB))
    (lower / "log").write_bytes(b"first line\n")
    return lower, up, work, mp


def _workload(mp: Path) -> bytes:
    """Write a new file, append to a lower one (a copy-up), change the new file through a shared
    mapping and read it back: what the upper layer must hold afterwards."""
    new = os.urandom(4 * MIB)
    with open(mp / "new", "wb") as f:
        f.write(new)
        f.flush()
        os.fsync(f.fileno())
    with open(mp / "log", "ab") as f:
        f.write(b"second line\n")
    with open(mp / "new", "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        m[:5] = b"HELLO"
        m.flush()
    return b"HELLO" + new[5:]


def _data_calls(trace: Path) -> int:
    """The server's reads and writes of file data (the loader's small preads of ELF headers aside)."""
    return sum(1 for n in DATA_CALL.findall(trace.read_text()) if int(n) >= 4096)


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
@pytest.mark.parametrize("passthrough", [True, False])
def test_file_data_never_reaches_the_server(tmp_path: Path, mounts, passthrough: bool) -> None:
    lower, up, work, mp = _layers(tmp_path)
    mounts.add(mp)
    trace = tmp_path / "server.strace"
    opts = f"lowerdir={lower},upperdir={up},workdir={work},{'' if passthrough else 'no'}passthrough"
    tracer = traced_overlay(opts, mp, trace, "pread64,pwrite64")
    try:
        want = _workload(mp)
        assert (mp / "new").read_bytes() == want
    finally:
        subprocess.run(["fusermount3", "-u", str(mp)], check=True, timeout=30)
        tracer.wait(timeout=30)
    assert (up / "new").read_bytes() == want
    assert (up / "log").read_bytes() == b"first line\nsecond line\n"
    if passthrough:
        assert _data_calls(trace) == 0
    else:  # the control: the same work through the server is dozens of requests
        assert _data_calls(trace) > 20


def _mount(lower: Path, up: Path, work: Path, mp: Path) -> None:
    from unionfs.mount import MountSpec, mount

    mount(MountSpec([lower], up, work), mp)


def test_copy_up_while_the_lower_file_is_open(tmp_path: Path, mounts) -> None:
    """The kernel holds one backing file per inode and fails an open that mixes passthrough with
    the page cache: an open for writing that copies up a file still open from the lower layer,
    and the opens after it, reach the upper file through the server until the last one closes."""
    lower, up, work, mp = _layers(tmp_path)
    _mount(lower, up, work, mounts.add(mp))
    with open(mp / "log", "rb") as ro:
        assert ro.read(5) == b"first"
        with open(mp / "log", "r+b") as rw:
            rw.seek(0, os.SEEK_END)
            rw.write(b"more\n")
            rw.flush()
            rw.seek(0)
            assert rw.read() == b"first line\nmore\n"
            with mmap.mmap(rw.fileno(), 0, flags=mmap.MAP_PRIVATE) as m:
                assert m[:5] == b"first"
        with open(mp / "log", "rb") as again:  # (the upper file now, beside the lower one's open)
            assert again.read() == b"first line\nmore\n"
    with open(mp / "log", "r+b") as f, mmap.mmap(f.fileno(), 0) as m:  # now passed through
        m[:5] = b"FIRST"
    with open(mp / "log", "rb") as a, open(mp / "log", "rb") as b:  # (sharing one backing file)
        assert a.read() == b.read() == b"FIRST line\nmore\n"
    assert (up / "log").read_bytes() == b"FIRST line\nmore\n"
    assert (lower / "log").read_bytes() == b"first line\n"


def test_refused_passthrough_falls_back(tmp_path: Path, mounts) -> None:
    """The kernel refuses a backing file on a stacked file system (ELOOP): with the upper layer
    inside a kernel overlayfs, the mount says so once and serves file data itself, losing nothing."""
    lower, _, _, mp = _layers(tmp_path)
    for d in ("klower", "kup", "kwork", "kmnt"):
        (tmp_path / d).mkdir()
    stacked = mounts.kernel_overlay([tmp_path / "klower"], tmp_path / "kup", tmp_path / "kwork", tmp_path / "kmnt")
    up, work = stacked / "up", stacked / "work"
    up.mkdir()
    work.mkdir()
    log = tmp_path / "server.log"
    cmd = [*OVERLAY, "-o", f"lowerdir={lower},upperdir={up},workdir={work}", str(mounts.add(mp))]
    env = {**os.environ, "STRATA_OVERLAY_LOG": str(log)}
    subprocess.run(cmd, check=True, timeout=60, stdin=subprocess.DEVNULL, env=env)
    want = _workload(mp)
    assert (mp / "new").read_bytes() == want
    assert (up / "log").read_bytes() == b"first line\nsecond line\n"
    assert log.read_text().count("FUSE passthrough refused") == 1
