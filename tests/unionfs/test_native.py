"""The compiled index builder (unionfs/_scan.pyx, unionfs/_merge.pyx) against its Python reference:
random layers, with every kind of entry, whiteout and opaque marker, must give identical tables,
merges and lookup tables."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from array import array
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unionfs import index, layertable

NAMES = st.sampled_from(["a", "b", "c", "dd", "a.b", "Z", "é", "\udcff", "x" * 40])  # ("\udcff": byte 0xff)
KINDS = st.sampled_from(["file", "dir", "symlink", "fifo", "link", "chr00", "chr11", "wh", "opq", "xattr"])


def test_the_compiled_builder_is_there() -> None:
    """setup.sh builds it; without it every index build would silently run the Python reference."""
    from unionfs import _merge, _scan  # noqa: F401

    assert layertable._scan_state is not None
    assert index.merge is not index.merge_python and index.hash_table is not index.hash_table_python


def _make(root: Path, ops: list[tuple[list[str], str, int]]) -> None:
    """Create *ops* under *root*: (path, kind, size); an op on a name that exists already, or below a
    non-directory, is skipped (as in a real layer, each name is one thing)."""
    root.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    for parts, kind, size in ops:
        d = root.joinpath(*parts[:-1])
        try:
            d.mkdir(parents=True, exist_ok=True)
            p = d / parts[-1]
            if os.path.lexists(p) and kind not in ("wh", "opq", "xattr"):
                continue  # (and never open an existing fifo for writing: it would wait for a reader)
            if kind == "file":
                p.write_bytes(b"x" * size)
            elif kind == "dir":
                p.mkdir()
            elif kind == "symlink":
                p.symlink_to(f"target{size}")
            elif kind == "fifo":
                os.mkfifo(p)
            elif kind == "link" and made:
                os.link(made[size % len(made)], p)
            elif kind == "chr00":
                os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(0, 0))
            elif kind == "chr11":
                os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(1, 1))
            elif kind == "wh":
                (d / f".wh.{parts[-1]}").write_bytes(b"")
            elif kind == "opq":
                (d / ".wh..wh..opq").write_bytes(b"")
            elif kind == "xattr":
                name = ("trusted.overlay.opaque", "user.overlay.opaque", "user.fuseoverlayfs.opaque")[size % 3]
                os.setxattr(d, name, b"y" if size % 4 else b"n")
            if kind in ("file", "fifo"):
                made.append(p)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            pass


OPS = st.lists(st.tuples(st.lists(NAMES, min_size=1, max_size=4), KINDS, st.integers(0, 9)), max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layers=st.lists(OPS, min_size=1, max_size=4))
def test_compiled_scan_and_merge_equal_the_python_reference(layers: list) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="strata-native-"))
    try:
        roots = []
        for k, ops in enumerate(layers):
            _make(tmp / str(k), ops)
            roots.append(os.fsencode(tmp / str(k)))
        tables = []
        for r in roots:
            layertable.scan_python(r)  # reading a directory may set its atime (relatime) once
            native, python = layertable.scan(r), layertable.scan_python(r)
            assert native.state() == python.state()
            tables.append(native)
        root_meta = array("q", range(10)).tobytes()
        got, want = index.merge(tables, root_meta), index.merge_python(tables, root_meta)
        assert got == want
        names, _, links, _ = want
        size = 1 << max(4, (2 * len(names) - 1).bit_length())
        assert index.hash_table(names, links, size) == index.hash_table_python(names, links, size)
    finally:
        shutil.rmtree(tmp)


def test_an_unreadable_directory_is_scanned_as_python_does(tmp_path: Path) -> None:
    """A directory that cannot be opened lists as empty (as os.listdir failing does) in both."""
    for root in (tmp_path / "missing", tmp_path / "file"):
        if root.name == "file":
            root.write_text("x")
        r = os.fsencode(root)
        layertable.scan_python(r)
        assert layertable.scan(r).state() == layertable.scan_python(r).state()


def test_many_xattr_names_are_read_as_python_does() -> None:
    """More xattr names than the compiled scan's buffer holds (ERANGE): still found opaque.  On
    tmpfs: ext4 keeps all of an inode's xattrs in one 4 KiB block, too small for that."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    tmp_path = Path(tempfile.mkdtemp(prefix="strata-xattrs-", dir="/dev/shm"))
    try:
        d = tmp_path / "d"
        d.mkdir()
        for i in range(300):
            os.setxattr(d, f"user.padding-{i:04}-" + "x" * 12, b"")
        os.setxattr(d, "user.overlay.opaque", b"y")
        assert sum(len(n) + 1 for n in os.listxattr(d)) > 4096
        r = os.fsencode(tmp_path)
        layertable.scan_python(r)
        native = layertable.scan(r)
        assert native.state() == layertable.scan_python(r).state()
        assert native.opaque == b"\x00\x01"  # the root, then d
    finally:
        shutil.rmtree(tmp_path)


def test_a_table_with_inconsistent_columns_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    t = layertable.scan(os.fsencode(tmp_path))
    state = list(t.state())
    state[1] = state[1][:-8]  # meta one int64 short: the compiled merge would read past it
    with pytest.raises(ValueError, match="inconsistent"):
        index.merge([layertable.LayerTable(*state)], array("q", range(10)).tobytes())
