"""`commit`: a container's changes as a new layer (OCI changeset rules) on top of its image."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
import tempfile
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
from .blobs import tmp_prefix
from .images import ImageRecord, LayerRef
from .layers import chain_ids
from .store import Store, now_rfc3339


@dataclass
class ChangedPath:
    """One change of the container layer: `path` is absolute in the rootfs (`/etc/motd`)."""

    path: str
    kind: str  # "A", "C" or "D"
    source: Path | None  # the file in the container layer (None for a deletion)
    opaque: bool = False  # a directory that hides everything below it


def _tarinfo(name: str, path: Path, keep_xattr: Callable[[str], bool]) -> tarfile.TarInfo:
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
    return info


def _marker(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime = 0, 0
    return info


def write_changeset(changes: Iterable[ChangedPath], out: BinaryIO, keep_xattr: Callable[[str], bool]) -> None:
    """A reproducible layer tar: entries sorted by path, normalised headers, hard links as links."""
    links: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for ch in sorted(changes, key=lambda c: c.path.encode()):
            name = ch.path.strip("/")
            if not name:
                continue
            if ch.kind == "D":
                tar.addfile(_marker(os.path.join(os.path.dirname(name), ".wh." + os.path.basename(name))))
                continue
            assert ch.source is not None
            info = _tarinfo(name, ch.source, keep_xattr)
            st = os.lstat(ch.source)
            if info.isreg() and st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in links:
                    info.type, info.linkname, info.size = tarfile.LNKTYPE, links[key], 0
                    tar.addfile(info)
                    continue
                links[key] = name
            if info.isreg():
                with open(ch.source, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
            if ch.opaque and info.isdir():
                tar.addfile(_marker(name + "/.wh..wh..opq"))


@contextmanager
def _compressor(dst: BinaryIO, compression: str) -> Iterator[BinaryIO]:
    """A writer that compresses into `dst` on every core (same bytes for the same input)."""
    if compression == "gzip":
        with igzip_threaded.open(dst, "wb", compresslevel=1, threads=-1) as z:
            yield z  # type: ignore[misc]
    elif compression == "zstd":
        with zstandard.ZstdCompressor(level=3, threads=-1).stream_writer(dst, closefd=False) as z:
            yield z  # type: ignore[misc]
    else:
        yield dst


class _Fanout:
    """The layer tar goes once through: the diffID hash, the compressor, and a plain copy to unpack."""

    def __init__(self, *sinks: BinaryIO) -> None:
        self.sinks = sinks
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        for s in self.sinks:
            s.write(data)
        return len(data)


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
    store.hold_ingest_lease()
    with tempfile.TemporaryDirectory(dir=store.blobs.tmp, prefix=tmp_prefix("commit")) as work:
        plain = Path(work) / "layer.tar"
        with store.blobs.writer(what="committed layer") as blob, open(plain, "wb") as copy:
            with _compressor(blob, compression) as packed:  # type: ignore[arg-type]
                fan = _Fanout(copy, packed)
                write_changeset(changes, fan, keep_xattr)  # type: ignore[arg-type]
        diff_id = "sha256:" + fan.hash.hexdigest()
        with open(plain, "rb") as f:
            unpacked = store.layers.unpack(f, parent, diff_id, "committed layer")  # verifies the diffID again
    layer = LayerRef(blob.digest, mt.layer_type_for(compression), blob.size, unpacked.diff_id)
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
