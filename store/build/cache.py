"""The build cache: each step's result by a key of what it depends on (the step before, the
instruction, the variables and config it sees, and for COPY/ADD the content it copies, mtimes
left out as BuildKit leaves them out), so a rebuild of what did not change takes no time and
gives the same image."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

from ..images import LayerRef, atomic_write
from ..layers import chain_id
from ..store import Store


def key(parent: str, *parts: object) -> str:
    h = hashlib.sha256(parent.encode())
    for p in parts:
        h.update(b"\0" + (p if isinstance(p, str) else json.dumps(p, sort_keys=True)).encode())
    return h.hexdigest()


def tree_digest(root: Path, rels: list[str], ignored: Callable[[str], bool]) -> str:
    """A digest of the files below *root* at *rels*: names, types, modes, owners and contents."""
    h = hashlib.sha256()

    def add(p: Path, rel: str) -> None:
        st = p.lstat()
        h.update(f"{rel}\0{st.st_mode:o}\0{st.st_uid}:{st.st_gid}\0".encode())
        if stat.S_ISLNK(st.st_mode):
            h.update(os.readlink(p).encode())
        elif stat.S_ISREG(st.st_mode):
            with open(p, "rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
        elif stat.S_ISDIR(st.st_mode):
            for child in sorted(p.iterdir()):
                sub = f"{rel}/{child.name}" if rel else child.name
                if not ignored(sub) or child.is_dir():
                    add(child, sub)

    for rel in sorted(rels):
        p = root / rel
        if os.path.lexists(p):
            add(p, rel)
    return h.hexdigest()


class BuildCache:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.dir = store.root / "buildcache"

    def get(self, k: str, parent_chain: str | None) -> tuple[dict, LayerRef | None] | None:
        """The history row and layer of step *k*, if its layer (over *parent_chain*) is still stored."""
        try:
            entry = json.loads((self.dir / k).read_text())
        except (FileNotFoundError, ValueError):
            return None
        layer = LayerRef(**entry["layer"]) if entry.get("layer") else None
        if layer is not None:
            if not (
                self.store.blobs.has(layer.digest) and self.store.layers.has(chain_id(parent_chain, layer.diff_id))
            ):
                (self.dir / k).unlink(missing_ok=True)  # (its layer was collected: the entry goes too)
                return None
        return entry["row"], layer

    def put(self, k: str, row: dict, layer: LayerRef | None) -> None:
        self.dir.mkdir(exist_ok=True)
        value = {"row": row, "layer": dataclasses.asdict(layer) if layer is not None else None}
        atomic_write(self.dir / k, json.dumps(value).encode(), self.store.blobs.tmp)

    def prune(self, everything: bool = False) -> tuple[list[str], int]:
        """Remove the entries whose layer blob is gone (*everything*: all); returns their keys and bytes."""
        removed, freed = [], 0
        for p in sorted(self.dir.iterdir()) if self.dir.is_dir() else []:
            try:
                size, layer, bad = p.stat().st_size, json.loads(p.read_text()).get("layer"), False
            except (OSError, ValueError, AttributeError):
                size, layer, bad = 0, None, True  # (unreadable: of no use to a build)
            if everything or bad or (layer and not self.store.blobs.has(layer["digest"])):
                p.unlink(missing_ok=True)
                removed.append(p.name)
                freed += size
        return removed, freed
