"""Changes of a container layer (upper dir) relative to its lowers, read from the upper and the index."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .index import load_or_build
from .upper import TMP_PREFIX
from .whiteout import OPAQUE_NAME, WH_PREFIX, is_whiteout_stat, upper_is_opaque


@dataclass(frozen=True)
class Change:
    path: str  # absolute path in the merged tree, e.g. "/etc/motd"
    kind: Literal["A", "C", "D"]
    upper_path: Path | None  # the upper file for A/C, None for D
    opaque: bool = False  # directory hides everything below it in the lowers


def iter_changes(lowers: list[Path], upper: Path, index_cache: Path | None = None) -> Iterator[Change]:
    """Yield the changes in *upper*, depth-first, names sorted.

    ``A``: the path does not exist in the lowers (as seen through the upper's opaque dirs), ``C``:
    it does, ``D``: a whiteout of a path that exists in the lowers.  Opaque directories carry
    ``opaque=True``: everything the lowers have below them is deleted.
    """
    idx = load_or_build(lowers, index_cache)
    root = os.fsencode(os.path.realpath(upper))
    yield from _walk(idx, root, b"", -1 if upper_is_opaque(root) else 0)


def _walk(idx, real: bytes, path: bytes, lower: int) -> Iterator[Change]:
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
    for name in sorted(entries):
        what, st = entries[name]
        p = path + b"/" + name
        e = idx.lookup(lower, name) if lower >= 0 else -1
        sp = os.fsdecode(p)
        if what == "wh":
            if e >= 0:
                yield Change(sp, "D", None)
            continue
        up = os.path.join(real, name)
        assert st is not None
        if stat.S_ISDIR(st.st_mode):
            opq = upper_is_opaque(up)
            yield Change(sp, "C" if e >= 0 else "A", Path(os.fsdecode(up)), opq)
            sub = e if (e >= 0 and idx.is_dir(e) and not opq) else -1
            yield from _walk(idx, up, p, sub)
        else:
            yield Change(sp, "C" if e >= 0 else "A", Path(os.fsdecode(up)))
