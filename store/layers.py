"""Unpacked layers: one read-only directory per chain ID, shared by every image that stacks it.

`layers/<chain-hex>/diff` holds the layer's files; `layers/<chain-hex>/layer.json` its record. A
layer is unpacked into a temporary directory and renamed into place only after its diffID was
verified, so a layer directory is always complete. Whether a layer is still needed is derived
from the image records (see `Store`), never stored as a counter that could drift.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

from . import digest as dg
from .blobs import tmp_prefix
from .compression import DECOMPRESS_ERRORS, disk_error, open_decompressed
from .errors import InvalidInput, NotFound
from .tarlayer import Unpacker, unpack


def chain_id(parent: str | None, diff_id: str) -> str:
    """ChainID(L0|…|Ln) = sha256(ChainID(L0|…|Ln-1) + " " + DiffID(Ln)); ChainID(L0) = DiffID(L0)."""
    return diff_id if parent is None else dg.of_bytes(f"{parent} {diff_id}".encode())


def chain_ids(diff_ids: list[str]) -> list[str]:
    out: list[str] = []
    for d in diff_ids:
        out.append(chain_id(out[-1] if out else None, d))
    return out


@dataclass
class Layer:
    chain_id: str
    diff_id: str
    parent: str | None
    size: int
    lost: list[str] = field(default_factory=list)


class LayerStore:
    def __init__(self, root: Path, tmp: Path) -> None:
        self.dir = root / "layers"
        self.tmp = tmp
        self.dir.mkdir(parents=True, exist_ok=True)
        self._parents: dict[str, str | None] = {}

    def _home(self, chain: str) -> Path:
        return self.dir / dg.hex_of(chain)

    def path(self, chain: str) -> Path:
        """The layer's read-only directory."""
        return self._home(chain) / "diff"

    def has(self, chain: str) -> bool:
        return (self._home(chain) / "layer.json").is_file()

    def get(self, chain: str) -> Layer:
        try:
            return Layer(**json.loads((self._home(chain) / "layer.json").read_text()))
        except FileNotFoundError:
            raise NotFound(f"layer {chain} not found") from None

    def all(self) -> list[Layer]:
        out = []
        for home in self.dir.iterdir():
            if (home / "layer.json").is_file():
                out.append(Layer(**json.loads((home / "layer.json").read_text())))
        return out

    def top_down(self) -> list[Layer]:
        """Every layer, each before its parent (children are deleted first)."""
        return top_down(self.all())

    def unpack(self, stream: BinaryIO, parent: str | None, diff_id: str | None, what: str) -> Layer:
        """Unpack a (possibly compressed) layer tar on top of chain `parent`.

        The uncompressed stream is hashed as it is unpacked; the layer is kept only if it equals
        `diff_id` (when given). Returns the existing record if the layer was already there.
        """
        work = Path(tempfile.mkdtemp(dir=self.tmp, prefix=tmp_prefix("layer")))
        try:
            (work / "diff").mkdir()
            try:
                plain, _ = open_decompressed(stream)
                hashing = dg.HashingReader(plain)
                result = unpack(hashing, work / "diff", self._lowers(parent))
                hashing.drain()
            except DECOMPRESS_ERRORS as e:
                if disk_error(e):
                    raise
                raise InvalidInput(f"{what}: corrupt or truncated data ({e})") from None
            dg.check(hashing.digest, diff_id, f"{what} (uncompressed)")
            layer = Layer(chain_id(parent, hashing.digest), hashing.digest, parent, result.size, result.lost)
            return self._install(work, layer)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)

    @contextmanager
    def build(self, parent: str | None) -> Iterator[LayerBuild]:
        """A layer made entry by entry on top of chain `parent`, without a tar to unpack.

        The caller adds every entry to `.unpacker` while it writes the same entries as the layer
        tar, then calls `.install(diff_id)` with that tar's digest. Nothing is kept unless it does.
        """
        work = Path(tempfile.mkdtemp(dir=self.tmp, prefix=tmp_prefix("layer")))
        try:
            (work / "diff").mkdir()
            yield LayerBuild(self, work, parent, Unpacker(work / "diff", self._lowers(parent)))
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)

    def _install(self, work: Path, layer: Layer) -> Layer:
        """Make the complete layer in `work` visible (or return the record of the one already there)."""
        if self.has(layer.chain_id):
            return self.get(layer.chain_id)
        (work / "layer.json").write_text(json.dumps(asdict(layer)))
        _syncfs(work)  # the layer's files reach the disk before the rename makes it visible
        try:
            os.rename(work, self._home(layer.chain_id))
        except OSError:
            if not self.has(layer.chain_id):  # not a concurrent writer's win: a real error
                raise
        return layer

    def _lowers(self, chain: str | None) -> _Lowers:
        """Directories of the layer `chain` and those below it, topmost first (walked when iterated:
        a layer at depth N must not cost N records read, or a deep stack costs N^2)."""
        if chain is not None and not self.has(chain):
            raise NotFound(f"layer {chain} not found")
        return _Lowers(self, chain)

    def parent_of(self, chain: str) -> str | None:
        """The parent chain of layer `chain` (remembered: installed layers never change)."""
        if chain not in self._parents:
            self._parents[chain] = self.get(chain).parent
        return self._parents[chain]

    def delete(self, chain: str) -> None:
        """Remove a layer: first make it invisible (rename), then delete its files."""
        home = self._home(chain)
        if not home.exists():
            return
        grave = Path(tempfile.mkdtemp(dir=self.tmp, prefix=tmp_prefix("rmlayer")))
        os.rename(home, grave / "x")
        shutil.rmtree(grave, ignore_errors=True)


class _Lowers:
    """The directories of a layer and those below it, topmost first, read as they are iterated."""

    def __init__(self, store: LayerStore, chain: str | None) -> None:
        self.store, self.chain = store, chain

    def __iter__(self) -> Iterator[Path]:
        chain = self.chain
        while chain is not None:
            yield self.store.path(chain)
            chain = self.store.parent_of(chain)


def top_down(all_layers: list[Layer]) -> list[Layer]:
    """*all_layers*, each before its parent."""
    layers = {x.chain_id: x for x in all_layers}
    depth: dict[str | None, int] = {}
    for c in layers:
        below: list[str] = []
        at: str | None = c
        while at in layers and at not in depth:
            below.append(at)  # type: ignore[arg-type]
            at = layers[at].parent  # type: ignore[index]
        d = depth.get(at, -1)
        for x in reversed(below):
            d += 1
            depth[x] = d
    return sorted(layers.values(), key=lambda x: (-depth[x.chain_id], x.chain_id))


@dataclass
class LayerBuild:
    """A layer being built by `LayerStore.build`."""

    store: LayerStore
    work: Path
    parent: str | None
    unpacker: Unpacker

    def install(self, diff_id: str) -> Layer:
        """Finish the directory and make it the layer with this diffID (the tar the entries formed)."""
        dg.validate(diff_id)
        self.unpacker.finish()
        r = self.unpacker.result
        layer = Layer(chain_id(self.parent, diff_id), diff_id, self.parent, r.size, r.lost)
        return self.store._install(self.work, layer)


_libc = ctypes.CDLL(None, use_errno=True)


def _syncfs(path: Path) -> None:
    """syncfs(2): one call flushes every file just written on that filesystem (no per-file fsync)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)
