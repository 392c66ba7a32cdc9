"""Names-only listings come as plain READDIRs (FUSE_CAP_READDIRPLUS_AUTO): each entry's name, inode
number and type must be what a lookup of it reports, and the names those of kernel overlayfs."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pyfuse3
import pytest

from unionfs.mount import mount_state

from .conftest import needs_fuse
from .helpers import OVERLAY

pytestmark = [
    needs_fuse,
    pytest.mark.skipif(getattr(pyfuse3, "STRATA_PATCH_LEVEL", 0) < 5, reason="pyfuse3 without plain readdir"),
]
N = 1500  # per layer: a listing of many READDIR replies (a reply holds one page of entries)


def _layers(tmp: Path) -> list[Path]:
    low, high = tmp / "low", tmp / "high"
    for i, layer in enumerate((low, high)):
        (layer / "big" / f"dir{i}").mkdir(parents=True)
        for j in range(N):
            (layer / "big" / f"f{i}-{j:05d}").write_bytes(b"x" * j)
        os.symlink("f0-00001", layer / "big" / f"link{i}")
    (high / "big" / "f0-00002").write_bytes(b"shadows the lower one")
    return [high, low]


def _change(mp: Path) -> None:
    big = mp / "big"
    (big / "new").write_bytes(b"new")
    (big / "newdir").mkdir()
    os.rename(big / "f0-00010", big / "moved")
    os.unlink(big / "f1-00020")
    os.rmdir(big / "dir1")
    os.rmdir(big / "dir0")  # a lower directory replaced by a file, and a lower file by a directory
    (big / "dir0").write_bytes(b"now a file")
    os.unlink(big / "f0-00030")
    (big / "f0-00030").mkdir()


def _entries(d: Path) -> dict[str, tuple[int, bool, bool]]:
    """name -> (d_ino, is_dir, is_symlink) as the listing says, each checked against lstat."""
    out = {}
    for de in os.scandir(d):
        st = os.lstat(de.path)
        got = (de.inode(), de.is_dir(follow_symlinks=False), de.is_symlink())
        assert got == (st.st_ino, stat.S_ISDIR(st.st_mode), stat.S_ISLNK(st.st_mode)), de.name
        out[de.name] = got
    return out


def _strata(opts: str, mp: Path, log: Path) -> subprocess.Popen:
    """strata-overlay in the foreground with libfuse's debug log (each request's opcode)."""
    with open(log, "wb") as err:
        p = subprocess.Popen([*OVERLAY, "-f", "-o", f"debug,{opts}", str(mp)], stdin=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 60
    while mount_state(mp) != "mounted":
        assert p.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.05)
    return p


@pytest.mark.parametrize("writable", [True, False])
def test_plain_listing_matches_lookups_and_kernel_overlayfs(tmp_path: Path, mounts, writable: bool) -> None:
    lowers = _layers(tmp_path)
    dirs = {n: tmp_path / n for n in ("up", "work", "kup", "kwork", "mnt", "kmnt")}
    for d in dirs.values():
        d.mkdir()
    kernel = mounts.kernel_overlay(lowers, dirs["kup"], dirs["kwork"], dirs["kmnt"])
    opts = "lowerdir=" + ":".join(map(str, lowers))
    if writable:
        opts += f",upperdir={dirs['up']},workdir={dirs['work']}"
    log = tmp_path / "debug.log"
    server = _strata(opts, mounts.add(dirs["mnt"]), log)
    try:
        mp = dirs["mnt"]
        before = sorted(os.listdir(mp / "big"))
        assert before == sorted(os.listdir(kernel / "big")) and len(before) == 2 * N + 4
        if writable:
            _change(mp)
            _change(kernel)
            assert sorted(os.listdir(mp / "big")) == sorted(os.listdir(kernel / "big"))
        names = sorted(os.listdir(mp / "big"))
        entries = _entries(mp / "big")  # (lstat of each entry after the listing: lookups)
        assert sorted(entries) == names
        dirs = {n for n in names if n.startswith(("dir", "newdir"))} - ({"dir0"} if writable else set())
        assert {n for n, e in entries.items() if e[1]} == dirs | ({"f0-00030"} if writable else set())
        assert {n for n, e in entries.items() if e[2]} == {"link0", "link1"}
    finally:
        mounts.close()
        server.wait(timeout=30)
    opcodes = log.read_text(errors="replace")
    assert "opcode: READDIR (" in opcodes and "opcode: READDIRPLUS (" in opcodes  # plain after the first page
