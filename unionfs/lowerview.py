"""Queries over a lower view (an :class:`~unionfs.index.Index` or a ``ProbeLower``) that take more
than one entry: the directory at a path, the hard-link groups."""

from __future__ import annotations

import stat
from typing import Any


def lower_groups(lo: Any) -> dict[int, list[int]]:
    """The lower entries of view *lo* that are hard links, by their inode (one pass over the view)."""
    meta = getattr(lo, "meta", None)
    if meta is not None:  # an Index: scan its nlink column with array slicing
        w = len(meta) // lo.count
        candidates: Any = [i for i, n in enumerate(meta[1::w]) if n > 1]
    else:
        candidates = range(lo.count)
    groups: dict[int, list[int]] = {}
    for i in candidates:
        s = lo.stat(i)
        if s[1] > 1 and not stat.S_ISDIR(s[0]):
            groups.setdefault(lo.ino(i), []).append(i)
    return groups


def dir_at(lo: Any, path: bytes) -> int:
    """The lower directory at lower path *path* (b"/..."), or -1."""
    e = 0
    for c in path[1:].split(b"/") if path != b"/" else ():
        e = lo.lookup(e, c)
        if e < 0:
            return -1
    return e if lo.is_dir(e) else -1
