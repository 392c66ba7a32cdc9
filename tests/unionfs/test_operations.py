"""Operations driven directly (no mount) and semantics checked through real mounts."""

from __future__ import annotations

import errno
import mmap
import os
import stat
from pathlib import Path

import pyfuse3
import pytest

from unionfs import tasks
from unionfs.changes import iter_changes
from unionfs.index import build_index
from unionfs.mount import MountSpec, mount, unmount
from unionfs.operations import UnionOperations
from unionfs.upper import Upper

from .conftest import needs_fuse


class Ctx:
    uid = gid = 0
    pid = 1
    umask = 0o022


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    d = {k: tmp_path / k for k in ("low", "top", "up", "work", "mnt")}
    for p in d.values():
        p.mkdir()
    (d["low"] / "etc").mkdir()
    (d["low"] / "etc" / "motd").write_text("hello")
    (d["low"] / "srv").mkdir()
    (d["low"] / "srv" / "old").write_text("old")
    (d["low"] / "srv" / "sub").mkdir()
    (d["low"] / "srv" / "sub" / "deep").write_text("deep")
    (d["top"] / "etc").mkdir()
    (d["top"] / "etc" / "issue").write_text("issue")
    (d["top"] / "etc" / ".wh.motd").touch()
    os.setxattr(d["top"] / "etc" / "issue", "user.keep", b"1")
    os.setxattr(d["top"] / "etc" / "issue", "trusted.overlay.origin", b"secret")
    os.setxattr(d["top"] / "etc" / "issue", "user.fuseoverlayfs.origin", b"secret")
    return d


def run(fn, *args):
    return tasks.run(lambda: fn(*args))


def test_direct_lookup_getattr_create_unlink(tree) -> None:
    ops = UnionOperations(build_index([tree["top"], tree["low"]]), Upper(tree["up"], tree["work"]))
    ctx = Ctx()

    async def scenario():
        etc = await ops.lookup(pyfuse3.ROOT_INODE, b"etc", ctx)
        assert stat.S_ISDIR(etc.st_mode)
        issue = await ops.lookup(etc.st_ino, b"issue", ctx)
        assert issue.st_size == 5
        # a miss is a negative entry (inode 0) the kernel may cache
        assert (await ops.lookup(etc.st_ino, b"motd", ctx)).st_ino == 0  # whited out in top
        assert (await ops.lookup(etc.st_ino, b".wh.motd", ctx)).st_ino == 0  # markers are invisible
        assert await ops.listxattr(issue.st_ino, ctx) == [b"user.keep"]
        with pytest.raises(pyfuse3.FUSEError):
            await ops.getxattr(issue.st_ino, b"trusted.overlay.origin", ctx)
        fi, attr = await ops.create(etc.st_ino, b"new", 0o640 | stat.S_IFREG, os.O_WRONLY, ctx)
        await ops.write(fi.fh, 0, b"abc")
        await ops.release(fi.fh)
        assert (tree["up"] / "etc" / "new").read_bytes() == b"abc"
        assert stat.S_IMODE(os.stat(tree["up"] / "etc" / "new").st_mode) == 0o640
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.create(etc.st_ino, b".wh.evil", 0o644 | stat.S_IFREG, os.O_WRONLY, ctx)
        assert ei.value.errno in (errno.EINVAL, errno.EPERM)
        await ops.unlink(etc.st_ino, b"issue", ctx)
        assert (await ops.lookup(etc.st_ino, b"issue", ctx)).st_ino == 0
        # the deletion of a lower file is recorded as a whiteout in the upper
        st = os.lstat(tree["up"] / "etc" / "issue")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0

    run(scenario)


def test_direct_read_only_is_erofs(tree) -> None:
    ops = UnionOperations(build_index([tree["low"]]), None)

    async def scenario():
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.mkdir(pyfuse3.ROOT_INODE, b"x", 0o755, Ctx())
        assert ei.value.errno == errno.EROFS

    run(scenario)


# ---------------------------------------------------------------------------------- mounted


@pytest.fixture
def mnt(tree, mounts):
    spec = MountSpec([tree["top"], tree["low"]], tree["up"], tree["work"])
    mount(spec, tree["mnt"])
    mounts.add(tree["mnt"])
    return tree["mnt"], spec


@needs_fuse
def test_private_names_and_xattrs_never_leak(mnt, tree) -> None:
    m, _ = mnt
    assert sorted(os.listdir(m / "etc")) == ["issue"]
    assert os.listxattr(m / "etc" / "issue") == ["user.keep"]
    with pytest.raises(OSError):
        os.getxattr(m / "etc" / "issue", "user.fuseoverlayfs.origin")
    with pytest.raises(OSError) as ei:
        (m / ".wh.x").write_text("x")
    assert ei.value.errno in (errno.EINVAL, errno.EPERM)
    with pytest.raises(OSError):
        os.mkdir(m / "etc" / ".wh..wh..opq")
    assert sorted(os.listdir(m / "etc")) == ["issue"]


@needs_fuse
def test_rm_then_mkdir_does_not_resurrect(mnt, tree) -> None:
    """fuse-overlayfs 1.10 bug: after rm -r srv; mkdir srv, lstat still found the old files."""
    m, spec = mnt
    for p in (m / "srv" / "sub" / "deep", m / "srv" / "old"):
        os.unlink(p)
    os.rmdir(m / "srv" / "sub")
    os.rmdir(m / "srv")
    os.mkdir(m / "srv")
    assert os.listdir(m / "srv") == []
    for name in ("old", "sub"):
        with pytest.raises(FileNotFoundError):
            os.lstat(m / "srv" / name)
    unmount(m)
    mount(spec, m)
    assert os.listdir(m / "srv") == []
    with pytest.raises(FileNotFoundError):
        os.lstat(m / "srv" / "old")


@needs_fuse
def test_rename_lower_directory_is_not_exdev(mnt, tree) -> None:
    m, spec = mnt
    os.rename(m / "srv", m / "moved")
    assert not os.path.exists(m / "srv")
    assert (m / "moved" / "sub" / "deep").read_text() == "deep"
    os.mkdir(m / "srv")
    assert os.listdir(m / "srv") == []
    unmount(m)
    mount(spec, m)
    assert sorted(os.listdir(m / "moved")) == ["old", "sub"]
    assert os.listdir(m / "srv") == []


@needs_fuse
def test_file_io_semantics(mnt, tree) -> None:
    m, _ = mnt
    p = m / "etc" / "issue"
    with open(p, "ab") as f:
        f.write(b"+more")
    assert p.read_bytes() == b"issue+more"
    with pytest.raises(FileExistsError):
        os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert p.read_bytes() == b""
    with open(m / "mm", "w+b") as f:
        f.truncate(8192)
        with mmap.mmap(f.fileno(), 8192) as mp:
            mp[4096:4101] = b"mmap!"
            mp.flush()
    assert (m / "mm").read_bytes()[4096:4101] == b"mmap!"
    with open(m / "huge", "wb") as f:
        f.seek(5 << 30)
        f.write(b"end")
    assert os.path.getsize(m / "huge") == (5 << 30) + 3
    with open(m / "huge", "rb") as f:
        f.seek(5 << 30)
        assert f.read() == b"end"
    with open(m / "etc" / "issue", "wb") as f:
        f.write(b"x")
        os.fsync(f.fileno())
    st = os.statvfs(m)
    assert st.f_blocks > 0 and st.f_namemax > 0
    os.mkfifo(m / "fifo")
    os.mknod(m / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    assert stat.S_ISFIFO(os.lstat(m / "fifo").st_mode)
    assert os.lstat(m / "null").st_rdev == os.makedev(1, 3)
    with pytest.raises(OSError) as ei:
        os.mknod(m / "wh", stat.S_IFCHR, os.makedev(0, 0))
    assert ei.value.errno == errno.EPERM


@needs_fuse
def test_hard_link_identity_survives_copy_up(tree, mounts) -> None:
    os.link(tree["low"] / "etc" / "motd", tree["low"] / "srv" / "motd-link")
    spec = MountSpec([tree["low"]], tree["up"], tree["work"])
    mount(spec, tree["mnt"])
    mounts.add(tree["mnt"])
    m = tree["mnt"]
    a, b = m / "etc" / "motd", m / "srv" / "motd-link"
    assert os.stat(a).st_ino == os.stat(b).st_ino and os.stat(a).st_nlink == 2
    with open(a, "a") as f:
        f.write(" world")
    assert b.read_text() == "hello world"
    unmount(m)
    mount(spec, m)
    assert b.read_text() == "hello world"
    assert os.stat(a).st_ino == os.stat(b).st_ino


@needs_fuse
@pytest.mark.parametrize("disable_kernel_whiteouts", [False, True])
def test_whiteout_formats_and_changes(tree, mounts, monkeypatch, disable_kernel_whiteouts) -> None:
    if disable_kernel_whiteouts:
        monkeypatch.setenv("FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT", "1")
    spec = MountSpec([tree["top"], tree["low"]], tree["up"], tree["work"])
    m = tree["mnt"]
    mount(spec, m)
    mounts.add(m)
    os.unlink(m / "srv" / "old")
    for p in ("srv/sub/deep",):
        os.unlink(m / p)
    os.rmdir(m / "srv" / "sub")
    os.mkdir(m / "srv" / "sub")  # re-created: opaque
    (m / "srv" / "sub" / "fresh").write_text("f")
    (m / "etc" / "issue").write_text("changed")
    (m / "added").write_text("a")
    up = tree["up"]
    if disable_kernel_whiteouts:
        assert (up / "srv" / ".wh.old").exists() and (up / "srv" / "sub" / ".wh..wh..opq").exists()
    else:
        assert stat.S_ISCHR(os.lstat(up / "srv" / "old").st_mode)
        assert os.getxattr(up / "srv" / "sub", "trusted.overlay.opaque") == b"y"
    unmount(m)
    mount(spec, m)
    assert sorted(os.listdir(m / "srv")) == ["sub"]
    assert os.listdir(m / "srv" / "sub") == ["fresh"]
    unmount(m)
    changes = {c.path: (c.kind, c.opaque) for c in iter_changes([tree["top"], tree["low"]], up)}
    assert changes["/srv/old"] == ("D", False)
    assert changes["/srv/sub"] == ("C", True)
    assert changes["/srv/sub/fresh"] == ("A", False)
    assert changes["/etc/issue"] == ("C", False)
    assert changes["/added"] == ("A", False)
    assert "/srv/sub/deep" not in changes  # hidden by the opaque dir, not a separate deletion
    assert not any(".wh." in p for p in changes)
