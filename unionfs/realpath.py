"""``os.path.realpath`` of a stack's layers, each directory on their paths resolved once.

``os.path.realpath`` ``lstat``-s every component of every path: 1000 layers at
containers/storage's depth (``…/overlay/ID/diff``, named through ``…/overlay/l/NAME`` links) cost
15–27 ms of each mount. Resolved here component by component, with what is resolved remembered,
a layer costs the ``lstat`` of its own last components (and a link's ``readlink``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

MAX_LINKS = 40  # as the kernel's limit of symlinks followed in one lookup

Resolved = tuple[bytes, "os.stat_result | None"]  # real path, its lstat (None: missing)


def realpaths(paths: Iterable[str | bytes | os.PathLike], stats: list | None = None) -> list[bytes]:
    """``os.path.realpath`` of each of *paths* (as bytes). With *stats*, the ``lstat`` of each
    result (None where it failed) is appended to it, for :func:`unionfs.index.layer_key`."""
    memo: dict[bytes, Resolved] = {}
    out = []
    cwd = os.getcwdb()
    for p in paths:
        a = os.path.join(cwd, os.fsencode(p))
        try:
            if b".." in a.split(b"/"):  # (a ".." after a link is not its lexical parent)
                raise _LongWay
            r, st = _real(os.path.normpath(a), memo, 0)
        except _LongWay:
            r = os.path.realpath(a)
            st = _lstat(r)
        out.append(r)
        if stats is not None:
            stats.append(st)
    return out


def _real(p: bytes, memo: dict[bytes, Resolved], links: int) -> Resolved:
    """The real path of the absolute, normalised *p* and its lstat, by resolving its parent first."""
    got = memo.get(p)
    if got is not None:
        return got
    if p == b"/":
        got = (p, os.lstat(p))
    elif links > MAX_LINKS:  # a loop: the whole path gets realpath's own answer
        raise _LongWay
    else:
        head, _, tail = p.rpartition(b"/")
        rhead = _real(head or b"/", memo, links)[0]
        cand = (rhead if rhead != b"/" else b"") + b"/" + tail
        try:
            st = os.lstat(cand)
        except OSError:
            got = (cand, None)  # (as realpath: the rest of a missing path is taken as it is)
        else:
            got = (cand, st)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(cand)
                # *rhead* is real, so a target's leading ".." are its lexical parents; a ".." after a
                # component that may be a link is not: that goes the long way
                parts = target.split(b"/")
                k = 0
                while k < len(parts) and parts[k] in (b"", b".", b".."):
                    k += 1
                if b".." in parts[k:]:
                    raise _LongWay
                base = target if target.startswith(b"/") else rhead + b"/" + target
                got = _real(os.path.normpath(base), memo, links + 1)
    memo[p] = got
    return got


class _LongWay(Exception):
    """This path is for ``os.path.realpath`` itself (a loop, a ".." after a link)."""


def _lstat(p: bytes) -> os.stat_result | None:
    try:
        return os.lstat(p)
    except OSError:
        return None
