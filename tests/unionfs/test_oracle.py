"""Differential oracle: strata vs kernel overlayfs on random layer stacks and operation sequences.

The same random layers are rendered twice: in OCI form (``.wh.`` files, ``.wh..wh..opq``) for strata
and in kernel form (char 0/0, ``trusted.overlay.opaque=y``) for overlayfs (redirect_dir=on,
index=on).  The same random operations run on both mounts; every errno and the complete final
trees must agree, and strata must show the same tree again after a remount of its upper.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import stat
import struct
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unionfs.changes import iter_changes
from unionfs.mount import MountSpec, mount, unmount

from .conftest import needs_fuse
from .helpers import Mounts, apply_changes, build_layer, identity, lineage, snapshot

NAMES = ["a", "b", "c"]
paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
modes = st.sampled_from([0o644, 0o600, 0o755, 0o700, 0o4755, 0o1777])
xnames = st.sampled_from(["user.x", "user.y"])
targets = st.sampled_from(["a", "../b", "/nowhere", "c/a"])

# file capabilities (VFS_CAP_REVISION_2, effective: cap_net_bind_service) and an access ACL (u::rw-,
# g::r--, o::---), both in the kernel's xattr formats: values the kernel accepts on any filesystem
CAP_NET_BIND = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)
ACL_640 = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, 0xFFFFFFFF) for t, p in ((1, 6), (4, 4), (0x20, 0)))
files = st.tuples(st.just("file"), paths, st.binary(max_size=24), modes)
entries = st.one_of(
    files,
    files,
    st.tuples(st.just("dir"), paths, modes, st.booleans()),
    st.tuples(st.just("symlink"), paths, targets),
    st.tuples(st.just("hardlink"), paths, paths),
    st.tuples(st.just("whiteout"), paths),
    st.tuples(st.just("fifo"), paths),
    st.tuples(st.just("xattr"), paths, xnames, st.binary(min_size=1, max_size=8)),
)
layer_stacks = st.lists(st.lists(entries, min_size=4, max_size=16), min_size=1, max_size=3)


def op_strategy(candidates: list[str]):
    """Operations whose paths mostly name things that exist (the layers' paths) plus fresh names."""
    p = st.one_of(st.sampled_from(candidates), st.sampled_from(candidates), paths) if candidates else paths
    return st.one_of(
        st.tuples(st.just("write"), p, st.binary(max_size=12), st.booleans()),
        st.tuples(st.just("truncate"), p, st.integers(0, 40)),
        st.tuples(st.just("fallocate"), p, st.sampled_from([0, 1, 3]), st.integers(0, 30), st.integers(1, 30)),
        st.tuples(st.just("chmod"), p, modes),
        st.tuples(st.just("chown"), p, st.integers(0, 2), st.integers(0, 2)),
        st.tuples(st.just("rename"), p, p, st.sampled_from([0, 0, 0, 1, 2])),
        st.tuples(st.just("link"), p, p),
        st.tuples(st.just("unlink"), p),
        st.tuples(st.just("rmdir"), p),
        st.tuples(st.just("rmtree"), p),
        st.tuples(st.just("recreate"), p, modes),  # rm -r PATH; mkdir PATH
        st.tuples(st.just("recreate"), p, modes),
        st.tuples(st.just("mkdir"), p, modes),
        st.tuples(st.just("symlink"), p, targets),
        st.tuples(st.just("setxattr"), p, xnames, st.binary(max_size=6)),
        st.tuples(st.just("setxattr"), p, st.just("security.capability"), st.just(CAP_NET_BIND)),
        st.tuples(st.just("setxattr"), p, st.just("system.posix_acl_access"), st.just(ACL_640)),
        st.tuples(st.just("removexattr"), p, xnames),
        # a descriptor held across an unlink (None) or a rename of its file, then written and read
        st.tuples(st.just("held"), p, st.one_of(st.none(), p), st.binary(min_size=1, max_size=8)),
    )


def candidates_of(stack: list[list[tuple]]) -> list[str]:
    out: set[str] = set()
    for layer in stack:
        for ent in layer:
            parts = ent[1].split("/")
            out.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return sorted(out)


_libc = ctypes.CDLL(None, use_errno=True)


def _renameat2(src: str, dst: str, flags: int) -> None:
    if _libc.renameat2(-100, os.fsencode(src), -100, os.fsencode(dst), ctypes.c_uint(flags)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def _rm_children(path: str) -> None:
    """Remove everything below directory *path*, depth first in name order (no symlinks followed)."""
    for n in sorted(os.listdir(path)):
        p = os.path.join(path, n)
        try:
            st = os.lstat(p)
        except FileNotFoundError:  # overlayfs lists stray whiteouts of single-layer directories
            continue
        if stat.S_ISDIR(st.st_mode):
            _rm_children(p)
            os.rmdir(p)
        else:
            os.unlink(p)


def apply(root: Path, op: tuple) -> int | tuple:
    """Run one operation under *root*; return 0 or the errno it failed with (or what it saw)."""
    kind, path = op[0], str(root / op[1])
    try:
        if kind == "held":
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
            try:
                if op[2] is None:
                    os.unlink(path)
                else:
                    _renameat2(path, str(root / op[2]), 0)
                os.pwrite(fd, op[3], 2)
                st = os.fstat(fd)
                return (st.st_size, st.st_nlink, stat.S_IMODE(st.st_mode), os.pread(fd, 64, 0))
            finally:
                os.close(fd)
        if kind == "write":
            fl = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | (os.O_APPEND if op[3] else os.O_TRUNC)
            fd = os.open(path, fl, 0o644)
            try:
                os.write(fd, op[2])
            finally:
                os.close(fd)
        elif kind == "truncate":
            os.truncate(path, op[2])
        elif kind == "fallocate":  # mode 0, KEEP_SIZE, PUNCH_HOLE | KEEP_SIZE
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            try:
                if _libc.fallocate(fd, op[2], ctypes.c_int64(op[3]), ctypes.c_int64(op[4])) != 0:
                    raise OSError(ctypes.get_errno(), "fallocate")
            finally:
                os.close(fd)
        elif kind == "chmod":
            os.chmod(path, op[2])
        elif kind == "chown":
            os.chown(path, op[2], op[3], follow_symlinks=False)
        elif kind == "rename":
            _renameat2(path, str(root / op[2]), op[3])
        elif kind == "link":
            os.link(path, str(root / op[2]), follow_symlinks=False)
        elif kind == "unlink":
            os.unlink(path)
        elif kind == "rmdir":
            os.rmdir(path)
        elif kind in ("rmtree", "recreate"):  # rm -r: children first, sorted (same order on both sides)
            _rm_children(path)
            os.rmdir(path)
            if kind == "recreate":
                os.mkdir(path, op[2])
        elif kind == "mkdir":
            os.mkdir(path, op[2])
        elif kind == "symlink":
            os.symlink(op[2], path)
        elif kind == "setxattr":
            os.setxattr(path, op[2], op[3], follow_symlinks=False)
        elif kind == "removexattr":
            os.removexattr(path, op[2], follow_symlinks=False)
    except OSError as e:
        return e.errno or -1
    return 0


def apply_as(root: Path, op: tuple, uid: int) -> int:
    """:func:`apply` as user *uid* (group *uid*, no supplementary groups), in a child process."""
    if uid == 0:
        return apply(root, op)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        code = -1
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            got = apply(root, op)
            code = b"%d" % got if isinstance(got, int) else repr(got).encode()
        finally:
            os.write(w, code if isinstance(code, bytes) else b"%d" % code)
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    os.waitpid(pid, 0)
    return int(out) if out.lstrip(b"-").isdigit() else out


def _unlinked(tree: dict) -> dict:
    """*tree* without link counts: with a copied-up hard link in a lower layer, overlayfs counts
    the links its index holds, strata those the layers show."""
    return {k: {f: x for f, x in v.items() if f != "nlink"} for k, v in tree.items() if k != "#links"}


def _said(r: int | tuple | bytes) -> object:
    return r if not isinstance(r, int) else (os.strerror(r) if r else "ok")


CASE_TIMEOUT = 120.0


def run_case(
    stack: list[list[tuple]],
    sequence: list[tuple],
    use_index: bool = True,
    wh_files: bool = False,
    uids: list[int] | None = None,
) -> None:
    """*wh_files*: strata writes ``.wh.`` whiteout files instead of char devices to its upper.
    *uids*: the user each operation runs as (default: root); strata is mounted allow_other."""
    timers: list[threading.Timer] = []

    def watchdog(pid: int | None) -> None:
        """A hung server would hang the test: kill it after a while (requests then fail, ENOTCONN)."""
        t = threading.Timer(CASE_TIMEOUT, os.kill, (pid, signal.SIGKILL))
        t.daemon = True
        t.start()
        timers.append(t)

    base = Path(tempfile.mkdtemp(prefix="strata-oracle-", dir="/var/tmp"))
    os.chmod(base, 0o755)
    m = Mounts()
    try:
        oci, kern = [], []
        for i, layer in enumerate(stack):
            build_layer(base / f"oci{i}", layer, kernel_form=False)
            build_layer(base / f"k{i}", layer, kernel_form=True)
            oci.append(base / f"oci{i}")
            kern.append(base / f"k{i}")
        for d in ("su", "sw", "sm", "ku", "kw", "km"):
            (base / d).mkdir()
            os.chmod(base / d, 0o755)
        m.kernel_overlay(kern, base / "ku", base / "kw", base / "km")
        spec = MountSpec(oci, base / "su", base / "sw", use_index=use_index, allow_other=uids is not None)
        if wh_files:
            os.environ["FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT"] = "1"
        try:
            watchdog(mount(spec, base / "sm"))
        finally:
            os.environ.pop("FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT", None)
        m.add(base / "sm")
        before = snapshot(base / "sm")
        assert before == snapshot(base / "km", kernel=True), "initial views differ"
        ids = identity(base / "sm"), identity(base / "km")
        for op, uid in zip(sequence, uids or [0] * len(sequence), strict=True):
            rs, rk = apply_as(base / "sm", op, uid), apply_as(base / "km", op, uid)
            assert (op, uid, _said(rs)) == (op, uid, _said(rk))
        expected = snapshot(base / "km", kernel=True)
        assert snapshot(base / "sm") == expected
        # which entries are still the inodes they were (copy-up, rename, link), with their mtimes
        ids_after = identity(base / "sm")
        assert lineage(ids[0], ids_after) == lineage(ids[1], identity(base / "km")), "inode identity differs"
        unmount(base / "sm")
        # the change list, applied to the lower view, gives the merged view
        changed = apply_changes(before, iter_changes(oci, base / "su", work=base / "sw"))
        assert changed == {
            k: {f: x for f, x in v.items() if f != "nlink"} for k, v in expected.items() if k != "#links"
        }, "iter_changes() does not reproduce the merged tree"
        watchdog(mount(spec, base / "sm"))
        assert snapshot(base / "sm") == expected, "view changed across a remount"
        if use_index:  # (--no-index numbers lower entries in the order they are looked up)
            assert identity(base / "sm") == ids_after, "inode numbers or times changed across a remount"
        # each upper as the top lower layer of a new mount (as the unionmount suite rotates its
        # layers): the whiteouts, opaque directories and redirects each wrote, read back as a lower;
        # a copied-up hard link's other links, still lower, show the old data again (the index
        # stays with the old work dir)
        if not use_index and any(e[0] == "hardlink" for layer in stack for e in layer):
            return  # (without an index strata copies up all links of an inode at once)
        unmount(base / "sm")
        m.kernel_unmount(base / "km")
        for d in ("su2", "sw2", "sm2", "ku2", "kw2", "km2"):
            (base / d).mkdir()
        m.kernel_overlay([base / "ku", *kern], base / "ku2", base / "kw2", base / "km2")
        spec2 = MountSpec([base / "su", *oci], base / "su2", base / "sw2", use_index=use_index)
        watchdog(mount(spec2, base / "sm2"))
        m.add(base / "sm2")
        assert _unlinked(snapshot(base / "sm2")) == _unlinked(snapshot(base / "km2", kernel=True)), "rotated"
    finally:
        for t in timers:
            t.cancel()
        m.close()
        shutil.rmtree(base, ignore_errors=True)


pytestmark = needs_fuse
SETTINGS = {"deadline": None, "suppress_health_check": list(HealthCheck)}


@settings(max_examples=100, **SETTINGS)
@given(stack=layer_stacks, data=st.data())
def test_matches_kernel_overlayfs(stack, data):
    run_case(stack, data.draw(st.lists(op_strategy(candidates_of(stack)), min_size=3, max_size=14)))


@settings(max_examples=15, **SETTINGS)
@given(stack=layer_stacks, data=st.data())
def test_noindex_matches_kernel_overlayfs(stack, data):
    run_case(stack, data.draw(st.lists(op_strategy(candidates_of(stack)), min_size=3, max_size=10)), use_index=False)


@settings(max_examples=25, **SETTINGS)
@given(stack=layer_stacks, data=st.data())
def test_without_passthrough_matches_kernel_overlayfs(stack, data):
    """The same with file data served by the server (where the kernel has no passthrough)."""
    old = os.environ.get("STRATA_PASSTHROUGH")
    os.environ["STRATA_PASSTHROUGH"] = "0"
    try:
        run_case(stack, data.draw(st.lists(op_strategy(candidates_of(stack)), min_size=3, max_size=14)))
    finally:
        if old is None:
            del os.environ["STRATA_PASSTHROUGH"]
        else:
            os.environ["STRATA_PASSTHROUGH"] = old


@settings(max_examples=20, **SETTINGS)
@given(stack=layer_stacks, data=st.data())
def test_wh_file_upper_matches_kernel_overlayfs(stack, data):
    run_case(stack, data.draw(st.lists(op_strategy(candidates_of(stack)), min_size=3, max_size=14)), wh_files=True)


@settings(max_examples=40, **SETTINGS)
@given(stack=layer_stacks, data=st.data())
def test_non_root_matches_kernel_overlayfs(stack, data):
    """Operations as root and as uid 1 (EACCES paths, copy-up of another user's file, allow_other)."""
    seq = data.draw(st.lists(op_strategy(candidates_of(stack)), min_size=3, max_size=14))
    run_case(stack, seq, uids=data.draw(st.lists(st.sampled_from([0, 1, 1]), min_size=len(seq), max_size=len(seq))))


@pytest.mark.slow
@settings(max_examples=1500, **SETTINGS)
@given(stack=layer_stacks, data=st.data())
def test_matches_kernel_overlayfs_long(stack, data):
    run_case(stack, data.draw(st.lists(op_strategy(candidates_of(stack)), min_size=5, max_size=40)))
