"""A read-only mount, where strata lets the kernel skip open/opendir and cache data and listings:
what it serves must still be exactly what kernel overlayfs serves for the same layers."""

from __future__ import annotations

import errno
import mmap
import os
import subprocess
from pathlib import Path

import pytest

from unionfs.mount import MountSpec, mount

from .conftest import needs_fuse
from .helpers import build_layer, snapshot

pytestmark = needs_fuse

FILES = 600  # more than the lower descriptors a mount keeps open


def _stack(tmp: Path, kernel: bool) -> list[Path]:
    low = [("file", f"many/f{i:03d}", f"low {i}\n".encode() * (i % 7 + 1), 0o644) for i in range(FILES)]
    low += [("file", "big", bytes(range(256)) * 4096, 0o644), ("dir", "gone", 0o755, False)]
    low += [("file", "gone/x", b"x", 0o600)]
    top = [("file", f"many/f{i:03d}", f"top {i}\n".encode(), 0o640) for i in range(0, FILES, 3)]
    top += [("whiteout", f"many/f{i:03d}") for i in range(1, FILES, 10)] + [("whiteout", "gone")]
    out = []
    for name, entries in (("top", top), ("low", low)):
        build_layer(tmp / f"{name}-{kernel}", entries, kernel_form=kernel)
        out.append(tmp / f"{name}-{kernel}")
    return out


@pytest.fixture
def pair(tmp_path: Path, mounts) -> tuple[Path, Path]:
    """(strata, kernel overlayfs) read-only mounts of the same two layers."""
    s, k = tmp_path / "s", tmp_path / "k"
    s.mkdir()
    k.mkdir()
    mount(MountSpec(_stack(tmp_path, kernel=False)), s)
    mounts.add(s)
    lowers = ":".join(map(str, _stack(tmp_path, kernel=True)))
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lowers}", str(k)], check=True)
    mounts.add(k)
    return s, k


def test_tree_and_contents_match_kernel_overlayfs_twice(pair) -> None:
    s, k = pair
    want = snapshot(k, kernel=True)
    assert snapshot(s) == want
    assert snapshot(s) == want  # again: now from the kernel's caches
    assert sorted(os.listdir(s / "many")) == sorted(os.listdir(k / "many"))


def test_many_open_files_mmap_and_refused_writes(pair) -> None:
    s, k = pair
    names = sorted(os.listdir(k / "many"))
    fds = [os.open(s / "many" / n, os.O_RDONLY) for n in names]
    try:
        for n, fd in reversed(list(zip(names, fds, strict=True))):  # reads hop between open files
            assert os.pread(fd, 4096, 0) == (k / "many" / n).read_bytes()
    finally:
        for fd in fds:
            os.close(fd)
    with open(s / "big", "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        assert m[:] == (k / "big").read_bytes()
    for fl in (os.O_WRONLY, os.O_RDWR | os.O_TRUNC):
        with pytest.raises(OSError) as e:
            os.open(s / "big", fl)
        assert e.value.errno == errno.EROFS
    assert not (s / "gone").exists()
