"""Changes of a container layer (upper dir) relative to its lowers, read from the upper and the index."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .index import load_or_build
from .lowerview import dir_at, lower_groups
from .upper import TMP_PREFIX
from .whiteout import OPAQUE_NAME, WH_PREFIX, is_whiteout_stat, read_redirect, upper_is_opaque


@dataclass(frozen=True)
class Change:
    path: str  # absolute path in the merged tree, e.g. "/etc/motd"
    kind: Literal["A", "C", "D"]
    upper_path: Path | None  # the upper file for A/C, None for D
    opaque: bool = False  # directory hides everything below it in the lowers


def iter_changes(
    lowers: list[Path], upper: Path, index_cache: Path | None = None, work: Path | None = None
) -> Iterator[Change]:
    """Yield the changes in *upper* (and in *work*'s index of copied-up hard links), depth-first,
    names sorted.

    ``A``: the path does not exist in the lowers (as seen through the upper's opaque dirs), ``C``:
    it does, ``D``: a whiteout of a path that exists in the lowers.  Opaque directories carry
    ``opaque=True``: everything the lowers have below them is deleted.  A directory renamed from
    elsewhere (a redirect) is a new directory with everything it shows: what the upper holds below
    it, and what its lower directory holds that the upper does not hide (``upper_path`` then names
    the lower file).  A lower hard link whose inode was copied up through another link is changed
    too (``upper_path`` names the index's copy), as the mounted tree shows it.
    """
    idx = load_or_build(lowers, index_cache)
    root = os.fsencode(os.path.realpath(upper))
    yield from _walk(idx, root, b"", -1 if upper_is_opaque(root) else 0, False)
    if work is not None:
        yield from _index_links(idx, root, os.path.join(os.fsencode(work), b"strata", b"index"))


def _index_links(idx, root: bytes, index: bytes) -> Iterator[Change]:
    """The lower hard links served from the index's copies of their inodes (still lower paths)."""
    try:
        names = os.listdir(index)
    except FileNotFoundError:
        return
    prefix = b"%016x-" % idx.view_id
    inos = {int(n[len(prefix) :], 16): n for n in names if n.startswith(prefix)}
    if not inos:
        return
    found = []
    for ino, group in lower_groups(idx).items():
        if ino in inos:
            found += [(idx.path(e), inos[ino]) for e in group if _shown(root, idx.path(e))]
    for p, n in sorted(found):
        yield Change(os.fsdecode(p), "C", Path(os.fsdecode(os.path.join(index, n))))


def _shown(root: bytes, path: bytes) -> bool:
    """Whether the upper *root* leaves lower *path* shown: nothing there, nothing hiding a parent."""
    real, cur = root, b""
    comps = path[1:].split(b"/")
    for i, c in enumerate(comps):
        if os.path.lexists(os.path.join(real, WH_PREFIX + c)):
            return False
        real, cur = os.path.join(real, c), cur + b"/" + c
        try:
            st = os.lstat(real)
        except FileNotFoundError:
            return True  # (nothing in the upper from here down)
        last = i == len(comps) - 1
        if last or not stat.S_ISDIR(st.st_mode) or upper_is_opaque(real) or read_redirect(real, cur) is not None:
            return False
    return True


def _walk(idx, real: bytes, path: bytes, lower: int, moved: bool) -> Iterator[Change]:
    """The changes below the upper directory *real* (merged *path*), which merges with lower entry
    *lower*; *moved*: it lies in a redirected directory, where all it shows is new."""
    entries: dict[bytes, tuple[str, os.stat_result | None]] = {}
    with os.scandir(real) as it:
        for de in it:
            n = de.name
            if n.startswith(WH_PREFIX):
                if n != OPAQUE_NAME and not n.startswith(TMP_PREFIX):
                    entries.setdefault(n[4:], ("wh", None))
                continue
            st = de.stat(follow_symlinks=False)
            entries[n] = ("wh" if is_whiteout_stat(st) else "real", st)
    shown = dict.fromkeys(entries)
    if moved and lower >= 0:
        shown.update((idx.name(e), e) for e in idx.children(lower) if idx.name(e) not in entries)
    for name in sorted(shown):
        p = path + b"/" + name
        sp = os.fsdecode(p)
        if name not in entries:  # shown from the lower directory of a redirected one
            yield from _lower_tree(idx, shown[name], sp)
            continue
        what, st = entries[name]
        e = idx.lookup(lower, name) if lower >= 0 else -1
        if what == "wh":
            if e >= 0 and not moved:
                yield Change(sp, "D", None)
            continue
        up = os.path.join(real, name)
        assert st is not None
        kind: Literal["A", "C"] = "C" if e >= 0 and not moved else "A"
        if stat.S_ISDIR(st.st_mode):
            opq = upper_is_opaque(up)
            target = None if opq else read_redirect(up, p)
            if target is not None:
                sub = dir_at(idx, target)
                yield Change(sp, kind, Path(os.fsdecode(up)), e >= 0 and not moved)
                yield from _walk(idx, up, p, sub, True)
                continue
            yield Change(sp, kind, Path(os.fsdecode(up)), opq)
            sub = e if (e >= 0 and idx.is_dir(e) and not opq) else -1
            yield from _walk(idx, up, p, sub, moved)
        else:
            yield Change(sp, kind, Path(os.fsdecode(up)))


def _lower_tree(idx, e: int, path: str) -> Iterator[Change]:
    """Lower entry *e* and everything below it, added at *path*."""
    yield Change(path, "A", Path(os.fsdecode(idx.real_path(e))))
    if idx.is_dir(e):
        for c in idx.children(e):
            yield from _lower_tree(idx, c, path + "/" + os.fsdecode(idx.name(c)))
