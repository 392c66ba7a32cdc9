"""`container prune` and `system prune`: what is no longer used goes, and what it held is counted."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .containers import Container
from .store import Event, Store


def tree_size(path: Path) -> int:
    """Bytes of the files below *path*, each inode counted once."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def prune_containers(store: Store, in_use: Callable[[Container], bool]) -> tuple[list[Container], int]:
    """Remove every stopped container: not running, and not *in_use* (mounted, as the caller sees
    it); returns them and the bytes their writable layers held."""
    removed, freed = [], 0
    with store.lock():
        for c in store.containers.all():
            if c.status == "running" or in_use(c):
                continue
            freed += tree_size(store.containers.home(c.id))
            store.containers.delete(c.id)
            removed.append(c)
    return removed, freed


@dataclass
class Reclaimed:
    containers: list[Container] = field(default_factory=list)
    images: list[Event] = field(default_factory=list)
    cache: list[str] = field(default_factory=list)  # build cache entries
    bytes: int = 0


def system_prune(store: Store, everything: bool, in_use: Callable[[Container], bool]) -> Reclaimed:
    """`docker system prune [-a]`: stopped containers, then dangling images (*everything*: every
    image no container uses), then the build cache whose layers are gone (*everything*: all of it)."""
    from .build.cache import BuildCache

    out = Reclaimed()
    out.containers, freed = prune_containers(store, in_use)
    out.images, images_freed = store.prune(everything)
    out.cache, cache_freed = BuildCache(store).prune(everything)
    out.bytes = freed + images_freed + cache_freed
    return out
