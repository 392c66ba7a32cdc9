"""Image archives: `docker save` tars (plain, gzip or zstd) and OCI image layouts, in and out."""

from __future__ import annotations

import io
import json
import os
import platform
import shutil
import tarfile
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from . import digest as dg
from . import mediatypes as mt
from . import reference
from .blobs import tmp_prefix
from .compression import (
    DECOMPRESS_ERRORS,
    MAGIC_BYTES,
    UNNAMED,
    as_layer_blob,
    detect,
    disk_error,
    open_decompressed,
)
from .errors import InvalidInput, NotFound, StoreError
from .images import ImageRecord, LayerRef, Variant
from .layers import chain_id
from .store import Store, oci_manifest


@dataclass
class Loaded:
    record: ImageRecord
    tags: list[reference.Reference]


class _Source(Protocol):
    def open(self, name: str) -> BinaryIO: ...
    def exists(self, name: str) -> bool: ...
    def done(self, name: str) -> None: ...


class _DirSource:
    def __init__(self, root: Path) -> None:
        self.root = root

    def open(self, name: str) -> BinaryIO:
        path = self.root / _member_name(name)
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise InvalidInput(f"archive entry {name!r} points outside the archive")
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise InvalidInput(f"archive is missing {name!r}") from None

    def exists(self, name: str) -> bool:
        return (self.root / _member_name(name)).is_file()

    def done(self, name: str) -> None:
        """*name* is not read again (nothing to free here)."""


class _TarSource:
    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.members = {_member_name(m.name): m for m in tar.getmembers() if m.isreg() or m.islnk()}

    def open(self, name: str) -> BinaryIO:
        m = self.members.get(_member_name(name))
        if m is None:
            raise InvalidInput(f"archive is missing {name!r}")
        f = self.tar.extractfile(m)
        assert f is not None
        return f  # type: ignore[return-value]

    def exists(self, name: str) -> bool:
        return _member_name(name) in self.members

    def done(self, name: str) -> None:
        """*name* is not read again (nothing to free here)."""


class _StreamSource:
    """The members of a tar stream, each kept in a temporary file of its own as it comes (a stream
    cannot be read twice, and its manifest comes last).  A member is deleted once it is not needed
    any more, so a load's disk peaks at what it stores plus the layers not stored yet, not at a
    second copy of the whole archive."""

    def __init__(self, tar: tarfile.TarFile, tmpdir: Path) -> None:
        self.dir = tmpdir
        self.files: dict[str, Path] = {}
        for i, m in enumerate(tar):
            name = _member_name(m.name)
            if m.isreg():
                f = tar.extractfile(m)
                assert f is not None
                p = tmpdir / str(i)
                with open(p, "wb") as out:
                    shutil.copyfileobj(f, out, dg.CHUNK)
                self.files[name] = p
            elif m.islnk() and _member_name(m.linkname) in self.files:
                self.files[name] = self.files[_member_name(m.linkname)]

    def open(self, name: str) -> BinaryIO:
        p = self.files.get(_member_name(name))
        if p is None:
            raise InvalidInput(f"archive is missing {name!r}")
        return open(p, "rb")

    def exists(self, name: str) -> bool:
        return _member_name(name) in self.files

    def done(self, name: str) -> None:
        """*name* is not read again: free its file, unless another name links to it."""
        p = self.files.pop(_member_name(name), None)
        if p is not None and p not in self.files.values():
            p.unlink(missing_ok=True)


def _member_name(name: str) -> str:
    return os.path.normpath(name.lstrip("/")).removeprefix("./")


def _read_json(src: _Source, name: str, limit: int = 64 << 20) -> object:
    with src.open(name) as f:
        data = f.read(limit)
    try:
        return json.loads(data)
    except ValueError:
        raise InvalidInput(f"archive entry {name!r} is not valid JSON") from None


@contextmanager
def _open_source(store: Store, source: Path | BinaryIO) -> Iterator[_Source]:
    """A random-access view of a directory, a tar file, or a (compressed) tar stream.

    A plain tar file is read in place; a stream or a compressed file is read once, its members
    kept until they are loaded (a tar's members are read in the order its manifest names them, not
    the order they come in).
    """
    if isinstance(source, Path) and source.is_dir():
        yield _DirSource(source)
        return
    raw: BinaryIO
    if isinstance(source, Path):
        try:
            raw = open(source, "rb")
        except OSError as e:
            raise InvalidInput(f"cannot read {source}: {e.strerror}") from None
    else:
        raw = source
    with raw:
        if raw.seekable() and detect(raw.read(MAGIC_BYTES)) == "none":
            raw.seek(0)
            with _tar_source(raw) as src:
                yield src
            return
        if raw.seekable():
            raw.seek(0)
        with tempfile.TemporaryDirectory(dir=store.blobs.tmp, prefix=tmp_prefix("load")) as tmp:
            try:
                plain, _ = open_decompressed(raw)
                with tarfile.open(fileobj=plain, mode="r|") as tar:  # type: ignore[call-overload]
                    src = _StreamSource(tar, Path(tmp))
            except tarfile.ReadError as e:
                raise InvalidInput(f"not a tar archive: {e}") from None
            except (*DECOMPRESS_ERRORS, tarfile.TarError, EOFError) as e:
                if disk_error(e):
                    raise
                raise InvalidInput(f"archive is corrupt or truncated: {e}") from None
            yield src


@contextmanager
def _tar_source(f: BinaryIO) -> Iterator[_Source]:
    try:
        tar = tarfile.open(fileobj=f, mode="r:")
    except tarfile.TarError as e:
        raise InvalidInput(f"not a tar archive: {e}") from None
    with tar:
        try:
            yield _TarSource(tar)
        except (tarfile.TarError, EOFError) as e:
            raise InvalidInput(f"archive is corrupt or truncated: {e}") from None


def load(store: Store, source: Path | BinaryIO) -> list[Loaded]:
    """Load every image of a `docker save` archive or an OCI layout (directory or tar)."""
    with _open_source(store, source) as src:
        if src.exists("manifest.json"):
            return _load_docker(store, src)
        if src.exists("index.json"):
            return _load_oci(store, src)
    raise InvalidInput("not a docker save archive or an OCI image layout (no manifest.json or index.json)")


def _digest_in_name(name: str) -> str | None:
    """`blobs/sha256/<hex>` or `<hex>.json` names carry the content's digest."""
    base = os.path.basename(name).removesuffix(".json")
    return "sha256:" + base if dg.is_digest("sha256:" + base) else None


@dataclass
class _Planned:
    """An image of the archive, read and checked but not stored yet."""

    config_bytes: bytes
    layers: list[tuple[str, str | None, str | None]]  # (member, expected blob digest, media type or None)
    tags: list[reference.Reference]
    manifest_bytes: bytes | None = None
    manifest_media_type: str = mt.OCI_MANIFEST


def _store_all(store: Store, src: _Source, plans: list[_Planned]) -> list[Loaded]:
    """Ingest the images' layers and record the images; each member is freed after its last use."""
    uses = Counter(name for plan in plans for name, _, _ in plan.layers)
    out = []
    for plan in plans:
        diff_ids = _config(plan.config_bytes)["rootfs"]["diff_ids"]
        if len(diff_ids) != len(plan.layers):
            raise InvalidInput(f"image has {len(plan.layers)} layers but its config lists {len(diff_ids)} diff_ids")
        refs: list[LayerRef] = []
        parent = None
        for (name, expected, media_type), diff_id in zip(plan.layers, diff_ids, strict=True):
            with src.open(name) as f:
                blob, kind = as_layer_blob(f)
                if kind in UNNAMED:  # stored decompressed: the digest named the compressed file, and
                    expected, media_type = None, None  # the config's diff_id still verifies the content
                media_type = media_type or mt.layer_type_for(kind)
                ref = store.ingest_layer(blob, parent, diff_id, media_type, expected, what=f"layer {name}")
            uses[name] -= 1
            if not uses[name]:
                src.done(name)
            refs.append(ref)
            parent = chain_id(parent, ref.diff_id)
        record = store.add_image(
            plan.config_bytes,
            refs,
            tags=plan.tags,
            manifest_bytes=plan.manifest_bytes,
            manifest_media_type=plan.manifest_media_type,
        )
        out.append(Loaded(record, plan.tags))
    return out


def _load_docker(store: Store, src: _Source) -> list[Loaded]:
    entries = _read_json(src, "manifest.json")
    if not isinstance(entries, list):
        raise InvalidInput("manifest.json is not a list of images")
    plans = []
    for entry in entries:
        try:
            config_name, layer_names = entry["Config"], list(entry["Layers"])
            tags = [reference.parse(t) for t in entry.get("RepoTags") or []]
        except (KeyError, TypeError):
            raise InvalidInput("manifest.json entry lacks Config or Layers") from None
        with src.open(config_name) as f:
            config_bytes = f.read()
        dg.check(dg.of_bytes(config_bytes), _digest_in_name(config_name), f"config {config_name}")
        layers = [(n, _digest_in_name(n) if n.startswith("blobs/") else None, None) for n in layer_names]
        plans.append(_Planned(config_bytes, layers, tags))
    return _store_all(store, src, plans)


def _host_platform() -> tuple[str, str]:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)
    return "linux", arch


def _load_oci(store: Store, src: _Source) -> list[Loaded]:
    index = _read_json(src, "index.json")
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise InvalidInput("index.json has no manifests list")
    plans = []
    for desc in index["manifests"]:
        annotations = desc.get("annotations") or {}
        name = annotations.get("io.containerd.image.name") or annotations.get("org.opencontainers.image.ref.name")
        tags = []
        if name and ("/" in name or ":" in name):
            tags = [reference.parse(name)]
        manifest_digest, media_type = _pick_manifest(src, desc)
        plans.append(_plan_oci_manifest(src, manifest_digest, media_type, tags))
    return _store_all(store, src, plans)


def _blob_name(d: str) -> str:
    return f"blobs/sha256/{dg.hex_of(d)}"


def _read_blob(src: _Source, d: str) -> bytes:
    with src.open(_blob_name(d)) as f:
        data = f.read()
    dg.check(dg.of_bytes(data), d, f"blob {d}")
    return data


def _pick_manifest(src: _Source, desc: dict) -> tuple[str, str]:
    """Follow an index entry down to one image manifest for the host platform."""
    media_type = desc.get("mediaType", mt.OCI_MANIFEST)
    d = dg.validate(desc.get("digest", ""))
    if media_type not in mt.INDEXES:
        return d, media_type
    nested = json.loads(_read_blob(src, d))
    os_name, arch = _host_platform()
    candidates = nested.get("manifests") or []
    for m in candidates:
        p = m.get("platform") or {}
        if p.get("os") == os_name and p.get("architecture") == arch:
            return _pick_manifest(src, m)
    platforms = ", ".join(
        f"{(m.get('platform') or {}).get('os')}/{(m.get('platform') or {}).get('architecture')}" for m in candidates
    )
    raise NotFound(f"no image for {os_name}/{arch} in the index (it has: {platforms})")


def _plan_oci_manifest(src: _Source, d: str, media_type: str, tags: list) -> _Planned:
    manifest_bytes = _read_blob(src, d)
    manifest = json.loads(manifest_bytes)
    config_bytes = _read_blob(src, dg.validate(manifest["config"]["digest"]))
    _config(config_bytes)
    layers = [(_blob_name(x["digest"]), x["digest"], x["mediaType"]) for x in manifest["layers"]]
    return _Planned(config_bytes, layers, tags, manifest_bytes, manifest.get("mediaType", media_type))


def _config(data: bytes) -> dict:
    try:
        config = json.loads(data)
        config["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError):
        raise InvalidInput("image config is not valid JSON with rootfs.diff_ids") from None
    return config


# -- writing -----------------------------------------------------------------------------------------


class _TarSink:
    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.written: set[str] = set()

    def add_bytes(self, name: str, data: bytes) -> None:
        self.add_file(name, io.BytesIO(data), len(data))

    def add_file(self, name: str, f: BinaryIO, size: int) -> None:
        if name in self.written:
            return
        self.written.add(name)
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, 0
        self.tar.addfile(info, f)


class _DirSink(_TarSink):
    """The same entries as files below a directory (an OCI layout written in place, no tar between)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.written = set()

    def add_file(self, name: str, f: BinaryIO, size: int) -> None:
        if name in self.written:
            return
        self.written.add(name)
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            shutil.copyfileobj(f, out, dg.CHUNK)
            out.flush()
            os.fsync(out.fileno())


def _write_layout(sink: _TarSink, index: list[dict]) -> None:
    sink.add_bytes("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    sink.add_bytes(
        "index.json", json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": index}).encode()
    )


def _index_entry(manifest: bytes, tag: reference.Reference | None) -> dict:
    desc: dict = {"mediaType": mt.OCI_MANIFEST, "digest": dg.of_bytes(manifest), "size": len(manifest)}
    if tag is not None:
        desc["annotations"] = {"io.containerd.image.name": str(tag), "org.opencontainers.image.ref.name": tag.tag}
    return desc


def _uncompressed_layer(store: Store, ref: LayerRef, tmpdir: Path) -> tuple[BinaryIO, int]:
    """The layer's tar, decompressed (Docker archives carry uncompressed layers named by diffID)."""
    blob = store.blobs.open(ref.digest)
    plain, kind = open_decompressed(blob)
    if kind == "none":
        blob.seek(0)
        return blob, store.blobs.size(ref.digest)
    spool = tempfile.TemporaryFile(dir=tmpdir)
    hashing = dg.HashingReader(plain)
    shutil.copyfileobj(hashing, spool, dg.CHUNK)  # type: ignore[misc]
    blob.close()
    dg.check(hashing.digest, ref.diff_id, f"stored layer {ref.digest}")
    size = spool.tell()
    spool.seek(0)
    return spool, size


def _display_tags(store: Store, record: ImageRecord, asked: str) -> list[reference.Reference]:
    """Tags to write: the one asked for if it is a tag, else every tag of the image (as Docker does)."""
    try:
        ref = reference.parse(asked)
        if not ref.digest and store.images.tags().get(str(ref)) == record.id:
            return [ref]
    except InvalidInput:
        pass
    return store.tags_of(record.id)


def _chosen(store: Store, names: list[str]) -> list[tuple[ImageRecord, list[reference.Reference]]]:
    return [(record, _display_tags(store, record, name)) for name in names for record in [store.resolve(name)]]


def save(store: Store, names: list[str], out: BinaryIO, fmt: str = "docker") -> None:
    """Write the images named as one archive: Docker's format (OCI layout + manifest.json) or OCI."""
    chosen = _chosen(store, names)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        sink = _TarSink(tar)
        if fmt == "docker":
            _write_docker(store, chosen, sink)
        elif fmt == "oci":
            _write_oci(store, chosen, sink)
        else:
            raise InvalidInput(f"unknown archive format {fmt!r} (use docker or oci)")


def _write_docker(store: Store, chosen: list[tuple[ImageRecord, list[reference.Reference]]], sink: _TarSink) -> None:
    manifest_json, index, repositories = [], [], {}
    for record, tags in chosen:
        config_bytes = store.blobs.read(record.id)
        sink.add_bytes(_blob_name(record.id), config_bytes)
        layer_descs = []
        for ref in record.layers:
            f, size = _uncompressed_layer(store, ref, store.blobs.tmp)
            with f:
                sink.add_file(_blob_name(ref.diff_id), f, size)
            layer_descs.append(LayerRef(ref.diff_id, mt.OCI_LAYER, size, ref.diff_id))
        manifest = oci_manifest(record.id, len(config_bytes), layer_descs)
        manifest_digest = dg.of_bytes(manifest)
        sink.add_bytes(_blob_name(manifest_digest), manifest)
        for t in tags or [None]:
            index.append(_index_entry(manifest, t))
            if t is not None and record.layers:
                repositories.setdefault(t.familiar_name, {})[t.tag] = dg.hex_of(record.layers[-1].diff_id)
        manifest_json.append(
            {
                "Config": _blob_name(record.id),
                "RepoTags": [t.familiar for t in tags],
                "Layers": [_blob_name(x.diff_id) for x in record.layers],
            }
        )
    _write_layout(sink, index)
    sink.add_bytes("manifest.json", json.dumps(manifest_json).encode())
    if repositories:
        sink.add_bytes("repositories", json.dumps(repositories).encode())


def _oci_manifest_bytes(store: Store, record: ImageRecord, variant: Variant) -> bytes:
    """The stored manifest if it is OCI already (digest preserved), else an OCI rendering of it."""
    if variant.media_type == mt.OCI_MANIFEST:
        return store.blobs.read(variant.manifest)
    return oci_manifest(record.id, store.blobs.size(record.id), variant.layers)


def _write_oci(store: Store, chosen: list[tuple[ImageRecord, list[reference.Reference]]], sink: _TarSink) -> None:
    index = []
    for record, tags in chosen:
        for tag in tags or [None]:
            variant = store.variant(record, str(tag) if tag else None)  # each tag as it came
            for d in [record.id, *(x.digest for x in variant.layers)]:
                with store.blobs.open(d) as f:
                    sink.add_file(_blob_name(d), f, store.blobs.size(d))
            manifest = _oci_manifest_bytes(store, record, variant)
            sink.add_bytes(_blob_name(dg.of_bytes(manifest)), manifest)
            index.append(_index_entry(manifest, tag))
    _write_layout(sink, index)


def save_to_dir(store: Store, names: list[str], target: Path) -> None:
    """Write an OCI layout directory (made in a temporary sibling, renamed into place)."""
    if target.exists():
        raise InvalidInput(f"{target} already exists")
    chosen = _chosen(store, names)  # (an unknown name fails before anything is written)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        _write_oci(store, chosen, _DirSink(work))
        os.chmod(work, 0o755)  # (mkdtemp makes it 0700)
        os.rename(work, target)
    except (StoreError, OSError):
        shutil.rmtree(work, ignore_errors=True)
        raise
