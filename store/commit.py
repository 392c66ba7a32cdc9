"""`commit`: a container's changes as a new layer (OCI changeset rules) on top of its image."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import stat
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard
from isal import igzip_threaded

from . import changes as config_changes
from . import mediatypes as mt
from . import reference
from .images import ImageRecord, LayerRef
from .layers import chain_ids
from .store import Store, now_rfc3339
from .tarlayer import Unpacker

BLOCK = 1 << 20  # tar copy chunk and compression block


@dataclass
class ChangedPath:
    """One change of the container layer: `path` is absolute in the rootfs (`/etc/motd`)."""

    path: str
    kind: str  # "A", "C" or "D"
    source: Path | None  # the file in the container layer (None for a deletion)
    opaque: bool = False  # a directory that hides everything below it


def _tarinfo(name: str, path: Path, keep_xattr: Callable[[str], bool]) -> tuple[tarfile.TarInfo, os.stat_result]:
    st = os.lstat(path)
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = st.st_mtime_ns // 1_000_000_000
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISREG(st.st_mode):
        info.size = st.st_size
    elif stat.S_ISLNK(st.st_mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
    elif stat.S_ISFIFO(st.st_mode):
        info.type = tarfile.FIFOTYPE
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    else:
        raise ValueError(f"cannot put {path} (a socket?) in a layer")
    for key in sorted(os.listxattr(path, follow_symlinks=False)):
        if keep_xattr(key):
            value = os.getxattr(path, key, follow_symlinks=False)
            info.pax_headers["SCHILY.xattr." + key] = value.decode("utf-8", "surrogateescape")
    return info, st


def _marker(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime = 0, 0
    return info


class _Tee:
    """Reads a file for the tar and writes every chunk it hands out to `copy` as well."""

    def __init__(self, src: BinaryIO, copy: BinaryIO) -> None:
        self.src, self.copy = src, copy

    def read(self, n: int) -> bytes:
        data = self.src.read(n)
        while data and len(data) < n and (more := self.src.read(n - len(data))):
            data += more  # a short read that is not the end: tarfile wants whole chunks
        self.copy.write(data)
        return data


class _Offset:
    """A writer that knows how much went through it: tarfile's seekless "w" mode asks `tell()`."""

    def __init__(self, out: BinaryIO) -> None:
        self.out, self.offset = out, 0

    def write(self, data: bytes) -> int:
        self.out.write(data)
        self.offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self.offset


class _Stopped(Exception):
    """The producer gave up in the middle of a file."""


class _LayerWriter:
    """Makes the layer directory's entries on a thread of its own, from what the tar writer sends.

    Creating files and copying their bytes into the page cache is most of a commit's time; on a
    second thread it overlaps with reading, hashing and compressing the next files. A regular
    file's entry is followed by its content, as chunks of exactly `size` bytes in all. Items go
    over in batches of about `BLOCK` bytes: one hand-over per small file costs more than the file.
    """

    def __init__(self, unpacker: Unpacker) -> None:
        self.unpacker = unpacker
        self.queue: queue.Queue[list[tarfile.TarInfo | bytes] | None] = queue.Queue(maxsize=32)
        self.batch: list[tarfile.TarInfo | bytes] = []
        self.batched = 0  # content bytes in `batch`
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="layer-writer", daemon=True)

    def __enter__(self) -> _LayerWriter:
        self.thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None and self.batch:
            self.queue.put(self.batch)
        self.queue.put(None)
        self.thread.join()
        if self.error is not None and kind is None:
            raise self.error

    def add(self, info: tarfile.TarInfo) -> None:
        self._put(info, 512)  # an entry costs about as much as a few hundred bytes of content

    def write(self, data: bytes) -> int:
        """Content of the regular file added last (`_Tee` calls this)."""
        if data:
            self._put(data, len(data))
        return len(data)

    def _put(self, item: tarfile.TarInfo | bytes, weight: int) -> None:
        if self.error is not None:
            raise self.error
        self.batch.append(item)
        self.batched += weight
        if self.batched >= BLOCK:
            self.queue.put(self.batch)
            self.batch, self.batched = [], 0

    def _items(self) -> Iterator[tarfile.TarInfo | bytes]:
        while (batch := self.queue.get()) is not None:
            yield from batch

    def _run(self) -> None:
        items = self._items()
        try:
            for item in items:
                assert isinstance(item, tarfile.TarInfo)
                self.unpacker.add(item, self._content(item.size, items) if item.isreg() else None)
        except _Stopped:
            return
        except BaseException as e:  # handed to the producer at its next write, or at the end
            self.error = e
            for _ in items:  # a producer blocked on a full queue goes on
                pass

    @staticmethod
    def _content(size: int, items: Iterator[tarfile.TarInfo | bytes]) -> Callable[[BinaryIO], None]:
        def write(dst: BinaryIO) -> None:
            left = size
            while left > 0:
                data = next(items, None)
                if data is None:
                    raise _Stopped
                assert isinstance(data, bytes)
                dst.write(data)
                left -= len(data)

        return write


def write_changeset(
    changes: Iterable[ChangedPath],
    out: BinaryIO,
    keep_xattr: Callable[[str], bool],
    layer: _LayerWriter | None = None,
    epoch: int | None = None,
) -> None:
    """A reproducible layer tar: entries sorted by path, normalised headers, hard links as links.

    With `layer`, every entry is also materialised there, file content from the very bytes the
    tar gets, so the layer directory holds exactly what the tar says without reading it back.
    """
    links: dict[tuple[int, int], str] = {}
    # "w", not the stream mode "w|", which re-slices every write into 10 KiB records
    with tarfile.open(fileobj=_Offset(out), mode="w", format=tarfile.PAX_FORMAT, copybufsize=BLOCK) as tar:  # type: ignore[call-overload]

        def entry(info: tarfile.TarInfo, src: Path | None = None) -> None:
            if layer is not None:
                layer.add(info)
            if src is None:
                tar.addfile(info)
                return
            with open(src, "rb", buffering=0) as f:
                tar.addfile(info, f if layer is None else _Tee(f, layer))  # type: ignore[arg-type]

        for ch in sorted(changes, key=lambda c: c.path.encode()):
            name = ch.path.strip("/")
            if not name:
                continue
            if ch.kind == "D":
                entry(_marker(os.path.join(os.path.dirname(name), ".wh." + os.path.basename(name))))
                continue
            assert ch.source is not None
            info, st = _tarinfo(name, ch.source, keep_xattr)
            if epoch is not None and info.mtime > epoch:  # (SOURCE_DATE_EPOCH: nothing newer than it)
                info.mtime = epoch
            if info.isreg() and st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in links:
                    info.type, info.linkname, info.size = tarfile.LNKTYPE, links[key], 0
                    entry(info)
                    continue
                links[key] = name
            entry(info, ch.source if info.isreg() else None)
            if ch.opaque and info.isdir():
                entry(_marker(name + "/.wh..wh..opq"))


@contextmanager
def _compressor(dst: BinaryIO, compression: str) -> Iterator[BinaryIO]:
    """A writer that compresses into `dst` on every core (same bytes for the same input)."""
    if compression == "gzip":
        with igzip_threaded.open(dst, "wb", compresslevel=1, threads=-1, block_size=BLOCK) as z:
            yield z  # type: ignore[misc]
    elif compression == "zstd":
        with zstandard.ZstdCompressor(level=3, threads=-1).stream_writer(dst, closefd=False) as z:
            yield z  # type: ignore[misc]
    else:
        yield dst


class _Fanout:
    """The layer tar goes once through the diffID hash and the compressor, in whole `BLOCK`s.

    The threaded gzip writer compresses each block it gets separately (primed with the previous
    block's tail), so fixed blocks make the blob depend on the tar's bytes only, never on how they
    were written; they also spare it the thousands of small writes of a tree of small files.
    """

    def __init__(self, sink: BinaryIO) -> None:
        self.sink = sink
        self.hash = hashlib.sha256()
        self.buf = bytearray()

    def write(self, data: bytes) -> int:
        self.buf += data
        if len(self.buf) >= BLOCK:
            self._emit(len(self.buf) - len(self.buf) % BLOCK)
        return len(data)

    def close(self) -> None:
        self._emit(len(self.buf))

    def _emit(self, n: int) -> None:
        with memoryview(self.buf) as view:
            for start in range(0, n, BLOCK):
                with view[start : min(start + BLOCK, n)] as block:
                    self.hash.update(block)
                    self.sink.write(block)
        del self.buf[:n]


def commit_layer(
    store: Store,
    parent: str | None,
    changes: Iterable[ChangedPath],
    keep_xattr: Callable[[str], bool],
    compression: str = "gzip",
    epoch: int | None = None,
) -> LayerRef:
    """Store the changes as a layer over chain *parent* (blob and layer directory); no image record.
    *epoch*: no entry's mtime later than it (a reproducible build's SOURCE_DATE_EPOCH)."""
    store.hold_ingest_lease()
    # one pass: the tar is hashed and compressed as its entries are made in the new layer directory
    with store.layers.build(parent) as build:
        with store.blobs.writer(what="committed layer") as blob:
            with _compressor(blob, compression) as packed:  # type: ignore[arg-type]
                fan = _Fanout(packed)
                with _LayerWriter(build.unpacker) as writer:
                    write_changeset(changes, fan, keep_xattr, writer, epoch)  # type: ignore[arg-type]
                fan.close()
        unpacked = build.install("sha256:" + fan.hash.hexdigest())
    return LayerRef(blob.digest, mt.layer_type_for(compression), blob.size, unpacked.diff_id)


def commit(
    store: Store,
    image: ImageRecord,
    changes: Iterable[ChangedPath],
    keep_xattr: Callable[[str], bool],
    tag: str | None = None,
    author: str | None = None,
    message: str | None = None,
    config_edits: list[str] = (),  # type: ignore[assignment]
    compression: str = "gzip",
) -> ImageRecord:
    """Store the changes as a layer over `image` and record the new image (tagged `tag`)."""
    ref = reference.parse(tag) if tag else None
    config = json.loads(store.blobs.read(image.id))
    container_config = config_changes.apply(dict(config.get("config") or {}), list(config_edits))
    parent = chain_ids([x.diff_id for x in image.layers])[-1] if image.layers else None
    layer = commit_layer(store, parent, changes, keep_xattr, compression)
    created = now_rfc3339()
    config["config"] = container_config
    config["created"] = created
    if author:
        config["author"] = author
    config["rootfs"]["diff_ids"] = [*config["rootfs"]["diff_ids"], layer.diff_id]
    entry = {"created": created, "created_by": " ".join(container_config.get("Cmd") or [])}
    if author:
        entry["author"] = author
    if message:
        entry["comment"] = message
    config["history"] = [*(config.get("history") or []), entry]
    config.pop("comment", None)
    data = json.dumps(config, separators=(",", ":")).encode()
    return store.add_image(data, [*image.layers, layer], tags=[ref] if ref else [], parent=image.id)
