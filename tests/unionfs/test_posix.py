"""A writable mount behaves as a local filesystem where overlays used to differ: files unlinked while
open, names of NAME_MAX bytes and paths of PATH_MAX below the mount (each expectation is POSIX's or
ext4's, checked on the real mount)."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pytest

from unionfs.mount import MountSpec, mount, unmount

from .conftest import needs_fuse

PATH_MAX = 4096
NAME_MAX = 255


@pytest.fixture
def mnt(tmp_path: Path, mounts):
    d = {k: tmp_path / k for k in ("low", "up", "work", "mnt")}
    for p in d.values():
        p.mkdir()
    (d["low"] / "lowfile").write_bytes(b"from the lower layer")
    spec = MountSpec([d["low"]], d["up"], d["work"])
    mount(spec, d["mnt"])
    mounts.add(d["mnt"])
    return d["mnt"], spec, d


@needs_fuse
def test_unlinked_open_file_keeps_data_and_attributes(mnt) -> None:
    m, _, _ = mnt
    p = m / "f"
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"Hello, World!")
        os.unlink(p)
        assert os.fstat(fd).st_nlink == 0
        assert os.pread(fd, 13, 0) == b"Hello, World!"
        os.pwrite(fd, b"J", 0)
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, 5)
        st = os.fstat(fd)
        assert (st.st_size, st.st_mode & 0o777, st.st_nlink) == (5, 0o600, 0)
        assert os.pread(fd, 100, 0) == b"Jello"
        # a new file at the same name is another inode, the open one is untouched
        p.write_bytes(b"new")
        assert os.fstat(fd).st_size == 5 and os.stat(p).st_size == 3
        assert os.fstat(fd).st_ino != os.stat(p).st_ino
    finally:
        os.close(fd)
    with tempfile.TemporaryFile(dir=m) as t:  # open, then unlinked at once
        t.write(b"x" * 10000)
        t.seek(0)
        assert t.read() == b"x" * 10000
        assert os.fstat(t.fileno()).st_size == 10000
    assert sorted(os.listdir(m)) == ["f", "lowfile"]


@needs_fuse
def test_unlinked_open_lower_file_still_reads(mnt) -> None:
    m, _, _ = mnt
    with open(m / "lowfile", "rb") as f:
        os.unlink(m / "lowfile")
        assert os.fstat(f.fileno()).st_nlink == 0
        assert f.read() == b"from the lower layer"
    assert not (m / "lowfile").exists()


@needs_fuse
def test_name_max(mnt) -> None:
    m, _, _ = mnt
    longest, too_long = "n" * NAME_MAX, "n" * (NAME_MAX + 1)
    (m / longest).write_text("x")
    os.chmod(m / longest, 0o600)
    os.rename(m / longest, m / ("r" * NAME_MAX))
    os.link(m / ("r" * NAME_MAX), m / longest)
    assert os.stat(m / longest).st_nlink == 2
    os.mkdir(m / ("d" * NAME_MAX))
    os.symlink("x", m / ("s" * NAME_MAX))
    for call in (
        lambda: os.stat(m / too_long),
        lambda: os.chmod(m / too_long, 0o600),
        lambda: open(m / too_long, "w"),
        lambda: os.mkdir(m / too_long),
        lambda: os.symlink("x", m / too_long),
        lambda: os.rename(m / longest, m / too_long),
        lambda: os.link(m / longest, m / too_long),
        lambda: os.mkfifo(m / too_long),
    ):
        with pytest.raises(OSError) as ei:
            call()
        assert ei.value.errno == errno.ENAMETOOLONG


def _deep(base_fd: int, total: int, comp: bytes) -> tuple[int, bytes]:
    """Create directories below *base_fd* until the relative path is *total* bytes long (with its
    trailing slash); returns a descriptor of the deepest and the path (each call is relative, so
    PATH_MAX holds for every one of them)."""
    fd, rel = os.dup(base_fd), b""
    while len(rel) < total:
        c = comp[: total - len(rel) - 1]
        os.mkdir(c, dir_fd=fd)
        nfd = os.open(c, os.O_PATH | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd, rel = nfd, rel + c + b"/"
    return fd, rel


@needs_fuse
def test_paths_up_to_path_max_below_the_mount(mnt) -> None:
    """The layer path (upper root + merged path) is longer than PATH_MAX: the server must cope."""
    m, spec, d = mnt
    top = os.open(m, os.O_PATH | os.O_DIRECTORY)
    try:
        fd, rel = _deep(top, PATH_MAX - 1 - NAME_MAX, b"d" * 120)
        name = b"f" * NAME_MAX  # the merged path is PATH_MAX - 1 bytes, as long as any may be
        assert len(rel + name) == PATH_MAX - 1
        dfd = os.open(b".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        try:
            with open(os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=dfd), "wb") as f:
                f.write(b"deep")
            assert os.stat(name, dir_fd=dfd).st_size == 4
            os.chmod(name, 0o640, dir_fd=dfd)
            os.rename(name, b"g", src_dir_fd=dfd, dst_dir_fd=dfd)
            os.link(b"g", name, src_dir_fd=dfd, dst_dir_fd=dfd)
            os.symlink(b"g", b"s", dir_fd=dfd)
            assert os.readlink(b"s", dir_fd=dfd) == b"g"
            os.setxattr(f"/proc/self/fd/{dfd}/g", "user.k", b"v")
            assert os.getxattr(f"/proc/self/fd/{dfd}/g", "user.k") == b"v"
            os.mkdir(b"sub", dir_fd=dfd)
            os.rmdir(b"sub", dir_fd=dfd)
            assert sorted(map(os.fsencode, os.listdir(dfd))) == sorted([b"g", name, b"s"])
            for n in (b"g", name, b"s"):
                os.unlink(n, dir_fd=dfd)
        finally:
            os.close(dfd)
    finally:
        os.close(top)
    # the same depth in a lower layer: copy-up on append, whiteout on unlink, across a remount
    unmount(m)
    low = os.open(d["low"], os.O_PATH | os.O_DIRECTORY)
    fd, rel = _deep(low, PATH_MAX - 1 - NAME_MAX, b"e" * 120)
    with open(os.open(b"x" * NAME_MAX, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
        f.write(b"low")
    os.close(fd)
    os.close(low)
    mount(spec, m)
    top = os.open(m, os.O_PATH | os.O_DIRECTORY)
    try:
        fd = os.open(rel, os.O_RDONLY | os.O_DIRECTORY, dir_fd=top)
        with open(os.open(b"x" * NAME_MAX, os.O_WRONLY | os.O_APPEND, dir_fd=fd), "ab") as f:
            f.write(b"+up")
        with open(os.open(b"x" * NAME_MAX, os.O_RDONLY, dir_fd=fd), "rb") as f:
            assert f.read() == b"low+up"
        os.close(fd)
    finally:
        os.close(top)


@needs_fuse
def test_copy_up_on_a_full_upper_leaves_nothing_and_the_mount_usable(tmp_path: Path, mounts) -> None:
    import subprocess

    low, fs, m = tmp_path / "low", tmp_path / "fs", tmp_path / "mnt"
    for p in (low, fs, m):
        p.mkdir()
    (low / "big").write_bytes(os.urandom(3 << 20))
    (low / "small").write_bytes(b"s")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(fs)], check=True, timeout=30)
    try:
        (fs / "up").mkdir()
        mount(MountSpec([low], fs / "up", fs / "work"), m)
        mounts.add(m)
        with pytest.raises(OSError) as ei:
            with open(m / "big", "ab") as f:
                f.write(b"more")
        assert ei.value.errno == errno.ENOSPC
        left = [n for n in os.listdir(fs / "work" / "strata") if n.startswith("tmp-")]
        assert left == []  # no temporary file left behind
        assert (m / "big").stat().st_size == 3 << 20  # the lower copy still serves
        (m / "new").write_bytes(b"fits")
        with open(m / "small", "ab") as f:
            f.write(b"+")
        assert (m / "small").read_bytes() == b"s+" and (m / "new").read_bytes() == b"fits"
        unmount(m)
    finally:
        subprocess.run(["umount", "-l", str(fs)], capture_output=True, timeout=30)


@needs_fuse
def test_copy_up_keeps_the_parent_times(tmp_path: Path, mounts) -> None:
    low, up, work, m = (tmp_path / k for k in ("low", "up", "work", "mnt"))
    for p in (low, up, work, m):
        p.mkdir()
    (low / "d" / "e").mkdir(parents=True)
    (low / "d" / "e" / "f").write_text("x")
    os.utime(low / "d", ns=(10**18, 10**18))
    os.utime(low / "d" / "e", ns=(2 * 10**18, 2 * 10**18))
    mount(MountSpec([low], up, work), m)
    mounts.add(m)
    with open(m / "d" / "e" / "f", "a") as f:  # copies up d, d/e and d/e/f
        f.write("y")
    assert os.stat(up / "d" / "e" / "f").st_size == 2
    assert os.stat(up / "d").st_mtime_ns == 10**18 and os.stat(up / "d" / "e").st_mtime_ns == 2 * 10**18
    unmount(m)
    mount(MountSpec([low], up, work), m)
    assert os.stat(m / "d").st_mtime_ns == 10**18 and os.stat(m / "d" / "e").st_mtime_ns == 2 * 10**18


@needs_fuse
def test_server_killed_during_copy_up(tmp_path: Path, mounts) -> None:
    """A kill -9 at any moment of a copy-up leaves the old content or the new, whole, and no
    temporary file once mounted again."""
    import signal
    import subprocess
    import threading
    import time

    low, up, work, m = (tmp_path / k for k in ("low", "up", "work", "mnt"))
    for p in (low, up, work, m):
        p.mkdir()
    data = os.urandom(1 << 20) * 96  # 96 MiB: its copy takes a while
    (low / "big").write_bytes(data)
    spec = MountSpec([low], up, work)
    for delay in (0.0, 0.02, 0.1):
        pid = mount(spec, m)
        mounts.add(m)

        def append() -> None:
            try:
                with open(m / "big", "ab") as f:
                    f.write(b"tail")
            except OSError:
                pass  # (the server died under it: expected)

        t = threading.Thread(target=append, daemon=True)
        t.start()
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        t.join(30)
        subprocess.run(["umount", "-l", str(m)], capture_output=True, timeout=30)
        mount(spec, m)
        content = (m / "big").read_bytes()
        assert content in (data, data + b"tail"), f"delay {delay}: {len(content)} bytes"
        assert [n for n in os.listdir(work / "strata") if n.startswith("tmp-")] == []
        unmount(m)
        if (up / "big").exists():
            os.unlink(up / "big")


@needs_fuse
def test_a_server_forked_after_this_process_used_long_paths_keeps_its_descriptors(tmp_path: Path, mounts) -> None:
    """The server is forked from its caller and closes what it inherits: descriptors that the
    caller's long-path cache held must not be closed again by number (one may be /dev/fuse by
    then); the suite saw renames fail with EBADF."""
    from unionfs import longpath

    deep = tmp_path / "deep"
    for i in range(20):
        deep = deep / (f"{i:02}" + "d" * 198)
    deep.mkdir(parents=True)
    for _ in range(2):  # cached, forgotten, cached again: numbers the next forgets would close
        longpath.fit(os.fsencode(deep / "x"))
        longpath.forget()
    d = {k: tmp_path / k for k in ("low", "up", "work", "mnt")}
    for p in d.values():
        p.mkdir()
    (d["low"] / "dir" / "sub").mkdir(parents=True)
    mount(MountSpec([d["low"]], d["up"], d["work"]), d["mnt"])
    mounts.add(d["mnt"])
    m = d["mnt"]
    for i in range(4):  # each directory rename makes the server forget its long-path descriptors
        os.rename(m / ("dir" if i == 0 else f"dir{i}"), m / f"dir{i + 1}")
    (m / "dir4" / "sub" / "f").write_bytes(b"still serving")
    assert (m / "dir4" / "sub" / "f").read_bytes() == b"still serving"
