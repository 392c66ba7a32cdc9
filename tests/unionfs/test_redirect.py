"""Directory renames move the directory alone, with a redirect, as overlayfs's redirect_dir=on does:
the upper then holds what the kernel's holds, each reads the other's redirects in its lower layers,
and a commit of the container still carries the whole renamed tree."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from unionfs.changes import iter_changes
from unionfs.libc import RENAME_EXCHANGE, renameat2
from unionfs.mount import MountSpec, mount, unmount

from .conftest import needs_fuse
from .helpers import apply_changes, snapshot

pytestmark = needs_fuse


def _lower(root: Path) -> None:
    for rel, data in (("a/b/f", b"deep"), ("a/t", b"top"), ("a/b/c/g", b"deeper"), ("d/x", b"x")):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def _ops(m: Path) -> None:
    os.rename(m / "a", m / "z")  # a lower directory, to a new name
    os.rename(m / "z" / "b", m / "b2")  # a directory inside the renamed one, to another parent
    (m / "z" / "n").write_bytes(b"new")
    os.unlink(m / "z" / "t")
    os.rename(m / "d", m / "b2" / "d")  # over nothing, into a redirected directory
    os.rename(m / "z", m / "a")  # back to its own name


def _upper_listing(up: Path) -> dict[str, str]:
    """Each upper entry's kind: what the layer holds, whatever its xattrs say."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(up):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = os.lstat(p)
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "whiteout" if stat.S_ISCHR(st.st_mode) else "file"
            out[str(p.relative_to(up))] = kind
    return out


@pytest.fixture
def both(tmp_path: Path, mounts):
    """The same lower and operations under strata and under kernel overlayfs (redirect_dir=on)."""
    for d in ("low", "su", "sw", "sm", "klow", "ku", "kw", "km"):
        (tmp_path / d).mkdir()
    _lower(tmp_path / "low")
    _lower(tmp_path / "klow")
    mount(MountSpec([tmp_path / "low"], tmp_path / "su", tmp_path / "sw"), tmp_path / "sm")
    mounts.add(tmp_path / "sm")
    mounts.kernel_overlay([tmp_path / "klow"], tmp_path / "ku", tmp_path / "kw", tmp_path / "km")
    _ops(tmp_path / "sm")
    _ops(tmp_path / "km")
    return tmp_path


def test_renamed_directories_copy_up_as_the_kernel_does(both: Path) -> None:
    assert snapshot(both / "sm") == snapshot(both / "km", kernel=True)
    up = _upper_listing(both / "su")
    assert up == _upper_listing(both / "ku")
    assert up["a/t"] == "whiteout"  # (unlinked)
    assert "b2/f" not in up and "b2/c" not in up and "b2/d/x" not in up  # nothing below was copied


def test_each_reads_the_others_redirects_as_a_lower(both: Path, mounts) -> None:
    want = snapshot(both / "km", kernel=True)
    unmount(both / "sm")
    mounts.kernel_unmount(both / "km")
    for d in ("u1", "w1", "m1", "u2", "w2", "m2"):
        (both / d).mkdir()
    # the kernel over strata's upper, strata over the kernel's
    mounts.kernel_overlay([both / "su", both / "low"], both / "u1", both / "w1", both / "m1")
    mount(MountSpec([both / "ku", both / "klow"], both / "u2", both / "w2"), both / "m2")
    mounts.add(both / "m2")
    assert snapshot(both / "m1", kernel=True) == want
    assert snapshot(both / "m2") == want
    # and a rename below a directory that a lower layer redirects
    os.rename(both / "m2" / "b2" / "c", both / "m2" / "c3")
    os.rename(both / "m1" / "b2" / "c", both / "m1" / "c3")
    assert snapshot(both / "m2") == snapshot(both / "m1", kernel=True)


def test_no_index_mount_follows_redirects(both: Path, mounts) -> None:
    want = snapshot(both / "km", kernel=True)
    unmount(both / "sm")
    (both / "u3").mkdir()
    (both / "w3").mkdir()
    spec = MountSpec([both / "su", both / "low"], both / "u3", both / "w3", use_index=False)
    mount(spec, both / "sm")
    assert snapshot(both / "sm") == want


def test_changes_of_a_renamed_directory_carry_its_whole_tree(both: Path) -> None:
    want = snapshot(both / "km", kernel=True)
    unmount(both / "sm")
    (both / "ro").mkdir()
    mount(MountSpec([both / "low"]), both / "ro")
    try:
        before = snapshot(both / "ro")
    finally:
        unmount(both / "ro")
    changes = list(iter_changes([both / "low"], both / "su"))
    assert {c.path for c in changes if c.kind == "A"} >= {"/b2/f", "/b2/c/g", "/b2/d/x"}
    strip = {k: {f: x for f, x in v.items() if f != "nlink"} for k, v in want.items() if k != "#links"}
    assert apply_changes(before, changes) == strip


def test_an_exchange_repaths_what_is_cached_below_a_redirected_directory(tmp_path: Path, mounts) -> None:
    """Cached nodes reached through a redirected directory move with an exchange of its parent
    (found by the oracle: they kept their old paths, and an unlink below answered ENOTDIR)."""
    for side in ("s", "k"):
        for d in ("low/a/a", "low/b/a", "u", "w", "m"):
            (tmp_path / side / d).mkdir(parents=True)
        (tmp_path / side / "low/a/a/a").write_bytes(b"")
    mount(MountSpec([tmp_path / "s/low"], tmp_path / "s/u", tmp_path / "s/w"), mounts.add(tmp_path / "s/m"))
    mounts.kernel_overlay([tmp_path / "k/low"], tmp_path / "k/u", tmp_path / "k/w", tmp_path / "k/m")
    for side in ("s", "k"):
        m = tmp_path / side / "m"
        for dirpath, dirnames, filenames in os.walk(m):  # every node cached
            for n in dirnames + filenames:
                os.lstat(os.path.join(dirpath, n))
        os.rename(m / "a", m / "b" / "a")  # a redirected directory, b/a, merging the lower a
        (m / "a").write_bytes(b"")
        # b/a becomes a/a, with what is cached below it
        renameat2(os.fsencode(m / "a"), os.fsencode(m / "b"), RENAME_EXCHANGE)
        os.unlink(m / "a/a/a/a")
        for d in ("a/a/a", "a/a", "a"):
            os.rmdir(m / d)
    assert snapshot(tmp_path / "s/m") == snapshot(tmp_path / "k/m", kernel=True)
