"""Lower hard links copy up as overlayfs's index=on copies them: the link written to goes into the
upper, its inode into the work dir's index, and the other links stay lower, served from the index
(the same inode, the same data, a link count that follows unlink and link), across remounts."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from unionfs.changes import iter_changes
from unionfs.mount import MountSpec, mount, unmount

from .conftest import needs_fuse
from .helpers import apply_changes, snapshot

pytestmark = needs_fuse


def _lower(root: Path) -> None:
    (root / "d").mkdir()
    (root / "a").write_bytes(b"old")
    os.link(root / "a", root / "b")
    os.link(root / "a", root / "d" / "c")


def _upper_kinds(up: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(up):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = os.lstat(p)
            out[str(p.relative_to(up))] = (
                "dir" if stat.S_ISDIR(st.st_mode) else "wh" if stat.S_ISCHR(st.st_mode) else "f"
            )
    return out


def _links(m: Path) -> dict[str, tuple[int, int, bytes]]:
    """For each link: (inode shared with 'a' or not, nlink, data)."""
    ino = os.lstat(m / "a").st_ino if (m / "a").exists() else None
    return {
        rel: ((st := os.lstat(m / rel)).st_ino == ino, st.st_nlink, (m / rel).read_bytes())
        for rel in ("a", "b", "d/c", "e")
        if (m / rel).exists()
    }


@pytest.fixture
def both(tmp_path: Path, mounts):
    for d in ("low", "su", "sw", "sm", "klow", "ku", "kw", "km"):
        (tmp_path / d).mkdir()
    _lower(tmp_path / "low")
    _lower(tmp_path / "klow")
    mount(MountSpec([tmp_path / "low"], tmp_path / "su", tmp_path / "sw"), tmp_path / "sm")
    mounts.add(tmp_path / "sm")
    mounts.kernel_overlay([tmp_path / "klow"], tmp_path / "ku", tmp_path / "kw", tmp_path / "km")
    return tmp_path


def test_one_link_is_copied_up_and_the_others_follow_it(both: Path) -> None:
    steps = [
        lambda m: (m / "a").write_bytes(b"new"),  # copy-up through a: b and d/c show it
        lambda m: os.unlink(m / "b"),  # nlink drops for the others
        lambda m: os.link(m / "d" / "c", m / "e"),  # a lower link linked again
        lambda m: os.rename(m / "e", m / "d" / "c"),  # a rename over another link: nothing changes
        lambda m: os.rename(m / "d" / "c", m / "b"),  # a lower link moved
    ]
    for step in steps:
        step(both / "sm")
        step(both / "km")
        assert _links(both / "sm") == _links(both / "km")
        assert snapshot(both / "sm") == snapshot(both / "km", kernel=True)
        assert _upper_kinds(both / "su") == _upper_kinds(both / "ku")


def test_the_index_serves_the_other_links_after_a_remount(both: Path) -> None:
    m = both / "sm"
    (m / "b").write_bytes(b"new")
    assert _upper_kinds(both / "su") == {"b": "f"}  # a and d/c stay lower
    seen = _links(m)
    unmount(m)
    mount(MountSpec([both / "low"], both / "su", both / "sw"), m)
    assert _links(m) == seen == {"a": (True, 3, b"new"), "b": (True, 3, b"new"), "d/c": (True, 3, b"new")}
    os.unlink(m / "a")
    assert os.lstat(m / "b").st_nlink == 2


def test_a_commit_carries_the_links_the_index_serves(both: Path) -> None:
    m = both / "sm"
    before = snapshot(m)
    (m / "d" / "c").write_bytes(b"new")
    want = snapshot(m)
    unmount(m)
    changes = list(iter_changes([both / "low"], both / "su", work=both / "sw"))
    assert {c.path: c.kind for c in changes if c.kind != "A"} == {"/a": "C", "/b": "C", "/d": "C", "/d/c": "C"}
    strip = lambda t: {k: {f: x for f, x in v.items() if f != "nlink"} for k, v in t.items() if k != "#links"}  # noqa: E731
    assert apply_changes(before, changes) == strip(want)
