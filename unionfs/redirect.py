"""Directories renamed in a lower layer: where the rest of the stack holds their contents.

A directory that carries a redirect (overlayfs's ``redirect_dir=on`` form, which strata's upper
writes for a directory rename) shows, from the layers below its own, the directory at its redirect
path instead of the one at its own path.  The layers below are searched as overlayfs searches
them: each walks the path in its own tree, a redirect met on the way rewrites the path for the
layers further down, a whiteout, a non-directory or an opaque directory ends the search.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any

from .layertable import LayerTable

Contrib = list[tuple[int, int]]  # (layer, directory number in that layer's table), topmost first


# one step of a walk: the directory *c* in directory *d* of a layer, at path *here* in it, as (its
# handle, its redirect made absolute, whether it is opaque); None if the layer has no such name,
# False if it hides the name
Step = Callable[[Any, bytes, bytes], "tuple[Any, bytes | None, bool] | bool | None"]


def walk(step: Step, d: Any, path: bytes) -> tuple[Any, bytes, bool]:
    """The directory at *path* in a layer whose root is *d* (None if it has none), the path that the
    layers below continue with, and whether they are cut off."""
    cont, stop = path, False
    comps = path[1:].split(b"/") if path != b"/" else []
    here = b""
    for i, c in enumerate(comps):
        here += b"/" + c
        got = step(d, c, here)
        if not got:
            return None, cont, stop or got is False
        d, target, opaque = got  # type: ignore[misc]
        if target is not None:
            rest = comps[i + 1 :]
            cont = b"/".join([target.rstrip(b"/"), *rest]) if rest else target
            stop = False  # (an absolute redirect continues even below an opaque ancestor)
        elif opaque:
            stop = True
    return d, cont, stop


def table_step(t: LayerTable) -> Step:
    """:data:`Step` through the directories of table *t* (handles: directory numbers)."""
    names = t.names

    def step(d: int, c: bytes, here: bytes) -> tuple[int, bytes | None, bool] | bool | None:
        wh = t.whiteouts.get(d)
        if wh and c in wh:
            return False
        s = t.start[d]
        e = s + t.count[d]
        j = bisect_left(names, c, s, e)
        if j >= e or names[j] != c:
            return None
        sd = t.sub[j]
        if sd < 0:
            return False  # a non-directory hides what is below it
        return sd, t.redirects.get(sd), bool(t.opaque[sd])

    return step


def expander(tables: Sequence[LayerTable]) -> tuple[Callable[[int, Contrib], Contrib], dict[tuple[int, int], bytes]]:
    """A function that turns a merged directory's contributors into the ones it really has (the
    chain below a redirected directory replaced, an opaque one ending it), and the map it fills:
    ``(merged entry, layer) -> path`` of that layer's contributor where it is not the entry's own."""
    where: dict[tuple[int, int], bytes] = {}
    steps = [table_step(t) for t in tables]

    def expand(entry: int, contrib: Contrib) -> Contrib:
        out: Contrib = []
        for k, d in contrib:
            out.append((k, d))
            t = tables[k]
            target = t.redirects.get(d)
            if target is None:
                if t.opaque[d]:
                    break
                continue
            for j in range(k + 1, len(tables)):
                r, below, stop = walk(steps[j], 0, target)
                if r is not None:
                    out.append((j, r))
                    where[(entry, j)] = target
                target = below
                if stop:
                    break
            break
        return out

    return expand, where
