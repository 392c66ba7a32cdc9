"""`system check`: prove a store consistent, as `git fsck` does a repository, and repair what is not.

Every blob must hash to its name; every layer directory must have its record, a chain ID that its
parent and diffID give, its parent and its `diff/`; every image record its config, manifest and
layer blobs and its layers; every tag an image, every container its image and writable layer.
Nothing may be left that no record needs (layers, blobs, compiled indexes) and no temporary file of
a dead writer.  Repair removes what is damaged (an image missing a part goes, with its tags and
containers) and what is unreferenced; the next pull or load brings back what was lost.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import digest as dg
from .blobs import _owner_alive
from .images import ImageRecord
from .layers import Layer, chain_id, top_down
from .store import Store


@dataclass
class Problem:
    what: str  # one line: what is wrong
    fix: Callable[[], None]  # what repair does
    done: str  # one line: what repair did


def _hash_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def check(store: Store, orphans: bool = True) -> tuple[list[Problem], dict[str, int]]:
    """What is wrong with *store* (call under its lock), and how many of each thing it holds.

    *orphans* False: another process is adding to the store, whose new layers and blobs no record
    names yet; what nothing needs is then neither reported nor removed."""
    problems: list[Problem] = []
    bad_images: set[str] = set()

    def add(what: str, fix: Callable[[], None], done: str) -> None:
        problems.append(Problem(what, fix, done))

    def drop_image(image_id: str) -> Callable[[], None]:
        def fix() -> None:
            for c in store.containers.all():
                if c.image == image_id:
                    store.containers.delete(c.id)
            store.untag_all(image_id)
            store.images.delete(image_id)

        return fix

    # blobs
    blobs = set()
    for p in sorted(store.blobs.dir.iterdir()):
        name = "sha256:" + p.name
        if not dg.is_digest(name) or not p.is_file():
            add(f"stray file blobs/sha256/{p.name}", _remover(p), f"removed stray blobs/sha256/{p.name}")
            continue
        got = _hash_file(p)
        if got != name:
            add(f"blob {name} is damaged (its content hashes to {got})", p.unlink, f"removed damaged blob {name}")
        else:
            blobs.add(name)
    # layers
    layers: dict[str, Layer] = {}
    for home in sorted(store.layers.dir.iterdir()):
        try:
            layer = Layer(**json.loads((home / "layer.json").read_text()))
        except (OSError, ValueError, TypeError) as e:
            why = "no record" if isinstance(e, FileNotFoundError) else "a damaged record"
            add(f"layer directory {home.name} has {why}", _remover(home), f"removed layer directory {home.name}")
            continue
        if dg.hex_of(layer.chain_id) != home.name or chain_id(layer.parent, layer.diff_id) != layer.chain_id:
            add(
                f"layer {home.name}: its record does not give its chain ID",
                _remover(home),
                f"removed layer {home.name}",
            )
        elif not (home / "diff").is_dir():
            add(f"layer {layer.chain_id} has no diff directory", _remover(home), f"removed layer {layer.chain_id}")
        else:
            layers[layer.chain_id] = layer
    for c, layer in layers.items():
        if layer.parent is not None and layer.parent not in layers:
            add(
                f"layer {c}: its parent {layer.parent} is missing",
                _remover(store.layers.path(c).parent),
                f"removed layer {c}",
            )
    # images
    records: list[ImageRecord] = []
    for p in sorted(store.images.dir.glob("*.json")):
        try:
            records.append(ImageRecord.from_json(json.loads(p.read_text())))
        except (OSError, ValueError, TypeError, KeyError):
            add(f"image record {p.name} is damaged", _remover(p), f"removed image record {p.name}")
    for r in records:
        missing = sorted(b for b in r.blobs if b not in blobs)
        missing += [c for c in store.chain(r) if c not in layers]
        if missing:
            bad_images.add(r.id)
            add(f"image {r.id} is missing {missing[0]}", drop_image(r.id), f"removed image {r.id} (incomplete)")
    # tags and containers
    live_ids = {r.id for r in records} - bad_images
    for t, i in sorted(store.images.tags().items()):
        if i not in live_ids and i not in bad_images:
            add(f"tag {t} names a missing image {i}", _untag(store, t), f"removed tag {t}")
    for c in store.containers.all():
        if c.image not in live_ids and c.image not in bad_images:
            add(
                f"container {c.name} uses a missing image {c.image}",
                _ctr_remover(store, c.id),
                f"removed container {c.name}",
            )
        elif not store.containers.upper(c.id).is_dir():
            add(f"container {c.name} has no writable layer", _ctr_remover(store, c.id), f"removed container {c.name}")
    # what nothing needs
    good = [r for r in records if r.id not in bad_images]
    live_chains = {c for r in good for c in store.chain(r)}
    live_blobs = {b for r in good for b in r.blobs}
    for layer in top_down(list(layers.values())) if orphans else ():
        if layer.chain_id not in live_chains:
            add(
                f"layer {layer.chain_id} is used by no image",
                _layer_remover(store, layer.chain_id),
                f"removed unused layer {layer.chain_id}",
            )
    for b in sorted(blobs - live_blobs) if orphans else ():
        add(f"blob {b} is used by no image", _remover(store.blobs.path(b)), f"removed unused blob {b}")
    live_indexes = {store.index_cache(r).name for r in good}
    for idx in sorted(store.index_dir.glob("*.idx")):
        if idx.name not in live_indexes:
            add(f"index {idx.name} belongs to no image", _remover(idx), f"removed index {idx.name}")
        elif not _index_ok(idx):
            add(
                f"index {idx.name} is damaged",
                _remover(idx),
                f"removed damaged index {idx.name} (rebuilt at the next mount)",
            )
    for p in sorted(store.blobs.tmp.iterdir()):
        if not _owner_alive(p.name):
            add(f"leftover temporary file tmp/{p.name}", _remover(p), f"removed tmp/{p.name}")
    counts = {
        "images": len(good),
        "layers": len(layers),
        "blobs": len(blobs),
        "containers": len(store.containers.all()),
    }
    return problems, counts


def repair(store: Store, problems: list[Problem]) -> list[str]:
    """Apply each problem's fix (under the store's lock); what was done, a line each."""
    done = []
    for p in problems:
        p.fix()
        done.append(p.done)
    if any("layer" in p.done for p in problems):
        from unionfs.index import prune_tables  # (directories only: no FUSE)

        prune_tables(store.index_dir)
    return done


def _index_ok(path: Path) -> bool:
    from unionfs.index import Index  # (directories only: no FUSE)

    return Index.load(path) is not None


def _remover(p: Path) -> Callable[[], None]:
    def fix() -> None:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        elif os.path.lexists(p):
            p.unlink()

    return fix


def _untag(store: Store, tag: str) -> Callable[[], None]:
    return lambda: store.images.set_tags({t: i for t, i in store.images.tags().items() if t != tag})


def _ctr_remover(store: Store, cid: str) -> Callable[[], None]:
    return lambda: store.containers.delete(cid)


def _layer_remover(store: Store, chain: str) -> Callable[[], None]:
    return lambda: store.layers.delete(chain)
