"""unionfs.realpath resolves as os.path.realpath does, links of every kind included."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from unionfs.realpath import realpaths

NAMES = ["a", "b", "c", "l1", "l2", "diff"]


def _tree(root: Path) -> None:
    """Directories, and links: relative with leading "..", absolute, chained, dangling, a loop,
    one whose ".." follows a link, one to a file."""
    for d in ("a/b/c", "a/diff", "b/c/diff", "c"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "c/file").write_text("x")
    links = {
        "l1": "a/b",
        "a/l2": "../b/c",
        "b/l1": str(root / "a/diff"),
        "c/l1": "../a/l2",
        "c/l2": "missing/x",
        "a/b/l1": "l1",  # a loop
        "b/l2": "../c/l1/../diff",  # ".." after a link
        "a/l1": "./b/./c",
        "b/c/l1": "../../c/file",
    }
    for name, target in links.items():
        os.symlink(target, root / name)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(NAMES + ["..", ".", ""]), min_size=1, max_size=5), min_size=1, max_size=6))
def test_every_path_resolves_as_os_path_realpath(tmp_path_factory, parts: list[list[str]]) -> None:
    root = tmp_path_factory.getbasetemp() / "realpath-tree"
    if not root.exists():
        root.mkdir()
        _tree(root)
    paths = [os.fsencode(root) + b"/" + "/".join(p).encode() for p in parts]
    stats: list = []
    got = realpaths(paths, stats)
    assert got == [os.path.realpath(p) for p in paths]
    for r, s in zip(got, stats, strict=True):
        if os.path.lexists(r):
            assert s is not None and (s.st_ino, s.st_mode) == (os.lstat(r).st_ino, os.lstat(r).st_mode)
        else:
            assert s is None


def test_relative_paths_and_containers_storage_links(tmp_path: Path, monkeypatch) -> None:
    home = tmp_path / "overlay"
    for i in range(3):
        (home / str(i) / "diff").mkdir(parents=True)
    (home / "l").mkdir()
    for i in range(3):
        os.symlink(f"../{i}/diff", home / "l" / f"L{i}")
    monkeypatch.chdir(home)
    paths = [f"l/L{i}" for i in range(3)] + [str(home / "l" / "L0"), "0/diff", "./1//diff/"]
    assert realpaths(paths) == [os.fsencode(os.path.realpath(p)) for p in paths]
