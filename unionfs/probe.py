"""The index-less lower view (``strata-noindex``): probes the layers one by one on every lookup.

It offers the same interface as :class:`unionfs.index.Index` (integer entry handles, ``lookup``,
``children``, ``stat``...), assigning handles on first sight, so the operations layer is identical
and a benchmark measures only the index's effect.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

from . import redirect
from .index import Stat, _fs
from .longpath import fit
from .whiteout import OPAQUE_NAME, WH_PREFIX, has_opaque_xattr, is_whiteout_stat, read_redirect


def _st(st: os.stat_result) -> Stat:
    return (
        st.st_mode,
        st.st_nlink,
        st.st_uid,
        st.st_gid,
        st.st_rdev,
        st.st_size,
        st.st_atime_ns,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_blocks,
    )


class ProbeLower:
    """Lower layers consulted directly, without a precompiled index."""

    def __init__(self, lowers: Sequence[str | os.PathLike]) -> None:
        self.lowers = [_fs(p) for p in lowers]
        self.key = b""
        root_st = os.lstat(self.lowers[0]) if self.lowers else None
        st = _st(root_st) if root_st else (stat.S_IFDIR | 0o755, 2, 0, 0, 0, 0, 0, 0, 0, 0)
        # entry: [parent, name, layer, stat, contrib, canon, real path]
        root = self.lowers[0] if self.lowers else b"/"
        self._e: list[list] = [[0, b"", 0, st, self._contrib(list(enumerate(self.lowers))), 0, root]]
        self._by: dict[tuple[int, bytes], int] = {}
        self._hard: dict[tuple[int, int], int] = {}

    def _contrib(self, cands: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        """The directories that really make up a merged one, of those at its path (*cands*): up to
        an opaque one, or a redirected one and what the layers below hold at its redirect."""
        out = []
        for layer, d in cands:
            out.append((layer, d))
            target = read_redirect(fit(d), d[len(self.lowers[layer]) :] or b"/")
            if target is not None:
                for j in range(layer + 1, len(self.lowers)):
                    r, target, stop = redirect.walk(_fs_step, self.lowers[j], target)
                    if r is not None:
                        out.append((j, r))
                    if stop:
                        break
                break
            if _opaque(d):
                break
        return out

    @property
    def count(self) -> int:
        return len(self._e)

    def lookup(self, parent: int, name: bytes) -> int:
        key = (parent, name)
        hit = self._by.get(key)
        if hit is not None:
            return hit
        if name.startswith(WH_PREFIX):
            return -1
        found: list | None = None
        sub: list[tuple[int, bytes]] = []
        for layer, d in self._e[parent][4]:
            p = fit(os.path.join(d, name))
            try:
                st = os.lstat(p)
            except OSError:
                st = None
            if st is not None and is_whiteout_stat(st):
                break
            if st is not None:
                if found is None:
                    found = [parent, name, layer, _st(st), None, 0, p]
                    if not stat.S_ISDIR(st.st_mode):
                        if st.st_nlink > 1:
                            found[5] = (layer, st.st_ino)
                        break
                    sub.append((layer, p))
                elif stat.S_ISDIR(st.st_mode):
                    sub.append((layer, p))
                else:
                    break
            if os.path.lexists(fit(os.path.join(d, WH_PREFIX + name))):
                break
        if found is None:
            return -1
        i = len(self._e)
        if found[5]:
            found[5] = self._hard.setdefault(found[5], i)
        else:
            found[5] = i
        if sub:
            found[4] = self._contrib(sub)
        self._e.append(found)
        self._by[key] = i
        return i

    def children(self, i: int) -> list[int]:
        names: set[bytes] = set()
        closed: set[bytes] = set()
        for _layer, d in self._e[i][4] or ():
            wh = []
            try:
                with os.scandir(fit(d)) as it:
                    for de in it:
                        n = de.name
                        if n.startswith(WH_PREFIX):
                            if n != OPAQUE_NAME:
                                wh.append(n[4:])
                            continue
                        if n in closed:
                            continue
                        names.add(n)
            except OSError:
                continue
            closed.update(wh)
        out = [self.lookup(i, n) for n in sorted(names)]
        return [e for e in out if e >= 0]

    def name(self, i: int) -> bytes:
        return self._e[i][1]

    def parent(self, i: int) -> int:
        return self._e[i][0]

    def layer(self, i: int) -> int:
        return self._e[i][2]

    def ino(self, i: int) -> int:
        return self._e[i][5] + 1

    def stat(self, i: int) -> Stat:
        return self._e[i][3]

    def mode(self, i: int) -> int:
        return self._e[i][3][0]

    def is_dir(self, i: int) -> bool:
        return stat.S_ISDIR(self._e[i][3][0])

    def path(self, i: int) -> bytes:
        parts = []
        while i != 0:
            parts.append(self._e[i][1])
            i = self._e[i][0]
        return b"/" + b"/".join(reversed(parts))

    def real_path(self, i: int) -> bytes:
        return self._e[i][6]


def _opaque(d: bytes) -> bool:
    return os.path.lexists(fit(os.path.join(d, OPAQUE_NAME))) or has_opaque_xattr(fit(d))


def _fs_step(d: bytes, c: bytes, here: bytes) -> tuple[bytes, bytes | None, bool] | bool | None:
    """:data:`unionfs.redirect.Step` through a layer on disk (handles: real paths)."""
    p = os.path.join(d, c)
    try:
        st = os.lstat(fit(p))
    except OSError:
        st = None
    if (st is not None and is_whiteout_stat(st)) or os.path.lexists(fit(os.path.join(d, WH_PREFIX + c))):
        return False
    if st is None:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return False
    return p, read_redirect(fit(p), here), _opaque(p)
