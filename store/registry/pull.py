"""`strata pull`: resolve a reference to one image manifest, fetch what the store lacks, unpack.

Pipeline: blobs the store lacks are downloaded in parallel (at most `max_connections` at a time,
in layer order) straight into the blob store, hashed while they stream (a temporary file renamed
into place only when the digest matches, so a mismatch keeps nothing and an interrupted pull keeps
every finished blob). Meanwhile the layers are unpacked strictly in manifest order (a layer's
chain ID depends on its parent), each from its blob file as soon as that blob is complete, in a
worker thread, verifying the diffID. Layers whose chain ID is already in the store are neither
fetched nor unpacked.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import httpx
import trio

from store import digest as dg
from store import mediatypes as mt
from store import reference
from store.errors import DigestMismatch, InvalidInput
from store.images import LayerRef
from store.layers import chain_ids
from store.reference import Reference
from store.store import Store

from . import platform as plat
from .client import ClientOptions, Registry
from .errors import RegistryError, run
from .progress import Reporter

LAYER_TYPES = {
    mt.OCI_LAYER,
    mt.OCI_LAYER_GZIP,
    mt.OCI_LAYER_ZSTD,
    mt.DOCKER_LAYER,
    mt.DOCKER_LAYER_GZIP,
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
}
CONFIG_TYPES = {mt.OCI_CONFIG, mt.DOCKER_CONFIG}
MAX_CONFIG = 16 << 20
WRITE_BATCH = 1 << 20
STREAM = os.environ.get("STRATA_PULL_STREAM", "1") != "0"  # unpack a layer while it downloads


@dataclass
class PullResult:
    """What one pulled reference resolved to."""

    reference: Reference
    digest: str  # the manifest (or index) digest the reference named
    image_id: str
    up_to_date: bool
    blobs_fetched: int = 0
    bytes_fetched: int = 0
    layers: list[str] = field(default_factory=list)  # layer blob digests


def short(digest: str) -> str:
    return dg.hex_of(digest)[:12]


@dataclass
class _Stats:
    blobs: int = 0
    bytes: int = 0


def parse_manifest(data: bytes, what: str) -> tuple[dict, list[dict]]:
    """Check an image manifest; return (config descriptor, layer descriptors)."""
    try:
        m = json.loads(data)
        config = m["config"]
        layers = m["layers"]
        if not isinstance(layers, list):
            raise TypeError
        for d in [config, *layers]:
            dg.validate(d["digest"])
            int(d["size"])
    except (ValueError, KeyError, TypeError) as e:
        raise RegistryError(f"{what}: malformed image manifest ({e.__class__.__name__}: {e})") from None
    ctype = config.get("mediaType", mt.OCI_CONFIG)
    if ctype not in CONFIG_TYPES:
        raise RegistryError(f"{what}: not a container image (config media type {ctype})")
    for d in layers:
        ltype = d.get("mediaType", "")
        if mt.is_foreign(ltype):
            raise RegistryError(
                f"{what}: layer {d['digest']} is a foreign (non-distributable) layer ({ltype}); "
                "strata cannot pull images with foreign layers"
            )
        if ltype not in LAYER_TYPES:
            raise RegistryError(f"{what}: layer {d['digest']} has unsupported media type {ltype!r}")
    return config, layers


class _Restart(Exception):
    """The registry ignored a Range request: start the blob again from its first byte."""


async def _download(reg: Registry, repo: str, desc: dict, store: Store, reporter: Reporter, stats: _Stats) -> None:
    """Fetch one blob into the store, verified while it streams.

    A dropped connection is retried (bounded, with backoff) from where it broke off (`Range`),
    or from scratch if the registry ignores the range.
    """
    digest, size = desc["digest"], int(desc["size"])
    sid = short(digest)
    what = f"blob {digest} from {reg.host}/{repo}"
    cm = store.blobs.writer(digest, what)
    w = cm.__enter__()
    attempt = 0
    try:
        while True:
            buf = bytearray()
            try:
                headers = {"Range": f"bytes={w.size}-"} if w.size else None
                async with reg.blob(repo, digest, headers) as resp:
                    if w.size and not resp.headers.get("content-range", "").startswith(f"bytes {w.size}-"):
                        raise _Restart
                    reporter.layer(sid, "Downloading", w.size, size)
                    async for chunk in resp.aiter_raw():
                        buf += chunk
                        if len(buf) >= WRITE_BATCH:
                            data = bytes(buf)
                            buf.clear()
                            await trio.to_thread.run_sync(w.write, data)
                            if w.size > size:
                                raise DigestMismatch(f"{what}: registry sent more than the {size} bytes announced")
                            reporter.layer(sid, "Downloading", w.size, size)
                    if buf:
                        await trio.to_thread.run_sync(w.write, bytes(buf))
                break
            except (httpx.TransportError, _Restart) as e:
                if attempt >= reg.options.retries:
                    raise RegistryError(f"{what}: connection lost ({e}) after {attempt + 1} attempts") from None
                if isinstance(e, _Restart):
                    cm.__exit__(type(e), e, e.__traceback__)  # discard the partial blob
                    cm = store.blobs.writer(digest, what)
                    w = cm.__enter__()
                else:
                    if buf:  # keep what arrived: the next request asks for the rest
                        await trio.to_thread.run_sync(w.write, bytes(buf))
                    await trio.sleep(reg.options.backoff * 2**attempt)
                attempt += 1
        if w.size != size:
            raise DigestMismatch(f"{what}: size mismatch (expected {size} bytes, got {w.size})")
    except BaseException as e:
        cm.__exit__(type(e), e, e.__traceback__)
        raise
    await trio.to_thread.run_sync(cm.__exit__, None, None, None)
    stats.blobs += 1
    stats.bytes += size
    reporter.layer(sid, "Download complete", size, size)


async def _fetch_config(reg: Registry, repo: str, desc: dict, store: Store, stats: _Stats) -> bytes:
    digest, size = desc["digest"], int(desc["size"])
    if store.blobs.has(digest):
        try:
            return store.blobs.read(digest)
        except DigestMismatch:
            pass  # a corrupt local copy: fetch it again
    if size > MAX_CONFIG:
        raise RegistryError(f"image config {digest} is too large ({size} bytes)")
    async with reg.blob(repo, digest) as resp:
        data = await resp.aread()
    dg.check(dg.of_bytes(data), digest, f"image config {digest} from {reg.host}/{repo}")
    stats.blobs += 1
    stats.bytes += len(data)
    return data


class _Broken(Exception):
    """The download feeding a streamed unpack broke off (the caller falls back to a file)."""


class _ChannelReader:
    """A file-like object a worker thread reads, fed chunk by chunk by a trio task.

    The bytes are hashed on the way; the end of the stream is only reported once the blob's
    digest and size are verified, so a layer unpacked from it is never committed from bad data.
    """

    def __init__(self, recv: trio.MemoryReceiveChannel, digest: str, size: int, what: str) -> None:
        self._recv = recv
        self._digest, self._size, self._what = digest, size, what
        self._buf = bytearray()
        self._hash = hashlib.sha256()
        self._total = 0
        self._eof = False

    def _more(self) -> None:
        try:
            item = trio.from_thread.run(self._recv.receive)
        except trio.EndOfChannel:
            raise _Broken("download ended early") from None
        if isinstance(item, BaseException):
            raise item
        if item is None:
            dg.check("sha256:" + self._hash.hexdigest(), self._digest, self._what)
            if self._total != self._size:
                raise DigestMismatch(f"{self._what}: size mismatch (expected {self._size} bytes, got {self._total})")
            self._eof = True
            return
        self._hash.update(item)
        self._total += len(item)
        if self._total > self._size:
            raise DigestMismatch(f"{self._what}: registry sent more than the {self._size} bytes announced")
        self._buf += item

    def read(self, n: int = -1) -> bytes:
        while not self._eof and (n < 0 or len(self._buf) < n):
            self._more()
        if n < 0:
            n = len(self._buf)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def readable(self) -> bool:
        return True


async def _stream_layer(
    reg: Registry,
    repo: str,
    desc: dict,
    store: Store,
    parent: str | None,
    diff_id: str,
    reporter: Reporter,
    stats: _Stats,
) -> bool:
    """Download a layer and unpack it in the same pass (`Store.ingest_layer` in a worker thread).

    Returns False, keeping nothing, when the connection broke (the caller retries another way).
    """
    digest, size, media_type = desc["digest"], int(desc["size"]), desc.get("mediaType", mt.OCI_LAYER_GZIP)
    sid = short(digest)
    what = f"blob {digest} from {reg.host}/{repo}"
    send, recv = trio.open_memory_channel[object](16)
    reader = _ChannelReader(recv, digest, size, what)
    broken = False

    async def consume() -> None:
        nonlocal broken
        try:
            await trio.to_thread.run_sync(store.ingest_layer, reader, parent, diff_id, media_type, digest, what)
        except _Broken:
            broken = True
        finally:
            recv.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        try:
            async with reg.blob(repo, digest) as resp:
                reporter.layer(sid, "Downloading", 0, size)
                done = 0
                async for chunk in resp.aiter_raw():
                    await send.send(chunk)
                    done += len(chunk)
                    reporter.layer(sid, "Downloading", done, size)
            await send.send(None)
        except trio.BrokenResourceError:
            pass  # the unpacker stopped: its own error is what the nursery raises
        except httpx.TransportError:
            broken = True
        finally:
            send.close()
    if broken:
        return False
    stats.blobs += 1
    stats.bytes += size
    return True


def _unpack(store: Store, digest: str, parent: str | None, diff_id: str, what: str) -> None:
    with store.blobs.open(digest) as f:
        store.layers.unpack(f, parent, diff_id, what)


async def resolve_manifest(reg: Registry, ref: Reference, wanted: plat.Platform | None) -> tuple[str, bytes, str, str]:
    """(top digest, image manifest bytes, its media type, its digest), choosing a platform in an index."""
    repo = ref.repository
    data, media_type, digest = await reg.get_manifest(repo, ref.digest or ref.tag or "latest", ref.familiar)
    top = digest
    if media_type in mt.INDEXES:
        try:
            index = json.loads(data)
        except ValueError:
            raise RegistryError(f"index {ref.familiar}: not valid JSON") from None
        entry = plat.select(index, wanted or plat.host())
        try:
            child = dg.validate(entry["digest"])
        except (KeyError, InvalidInput):
            raise RegistryError(f"index {ref.familiar}: malformed entry {entry!r}") from None
        data, media_type, digest = await reg.get_manifest(repo, child, f"{ref.familiar_name}@{child}")
        if media_type in mt.INDEXES:
            raise RegistryError(f"index {ref.familiar}: nested indexes are not supported")
    if media_type.startswith("application/vnd.docker.distribution.manifest.v1"):
        raise RegistryError(f"{ref.familiar}: Docker schema 1 manifests are not supported; re-push the image")
    if media_type not in mt.MANIFESTS:
        raise RegistryError(f"{ref.familiar}: unsupported manifest media type {media_type!r}")
    return top, data, media_type, digest


async def pull_one(
    store: Store, reg: Registry, ref: Reference, reporter: Reporter, wanted: plat.Platform | None = None
) -> PullResult:
    """Pull one reference (tag or digest) from an open registry connection."""
    repo = ref.repository
    stats = _Stats()
    top, data, media_type, digest = await resolve_manifest(reg, ref, wanted)
    reporter.header(f"{ref.digest or ref.tag}: Pulling from {repo}")
    config_desc, layer_descs = parse_manifest(data, ref.familiar)
    config_bytes = await _fetch_config(reg, repo, config_desc, store, stats)
    try:
        config = json.loads(config_bytes)
        diff_ids = [dg.validate(d) for d in config["rootfs"]["diff_ids"]]
    except (ValueError, KeyError, TypeError, InvalidInput):
        raise RegistryError(f"image config {config_desc['digest']}: malformed (no valid rootfs.diff_ids)") from None
    if wanted is not None and top == digest:  # a single-platform image: its config must match
        actual = plat.Platform(
            str(config.get("os", "")), str(config.get("architecture", "")), config.get("variant") or None
        )
        if not wanted.matches(actual):
            raise RegistryError(
                f"image with reference {ref.familiar} was found but does not match the specified platform: "
                f"wanted {wanted}, actual: {actual}"
            )
    if len(diff_ids) != len(layer_descs):
        raise RegistryError(
            f"{ref.familiar}: manifest has {len(layer_descs)} layers but the config lists {len(diff_ids)} diff_ids"
        )
    chains = chain_ids(diff_ids)
    # Blobs and layers land before the image record does: keep another process's rmi/prune from
    # collecting them meanwhile (the lease `Store.ingest_layer` takes; we also write blobs directly).
    store.hold_ingest_lease()
    missing = [not store.layers.has(c) for c in chains]
    ready: dict[str, trio.Event] = {}
    unpacked = [trio.Event() for _ in layer_descs]
    for i, is_missing in enumerate(missing):
        if not is_missing:
            unpacked[i].set()
    async with trio.open_nursery() as nursery:
        limiter = trio.CapacityLimiter(max(1, reg.options.max_connections))

        streamed: set[int] = set()

        async def fetch(i: int, desc: dict, ev: trio.Event) -> None:
            async with limiter:
                # The unpacker is waiting for exactly this layer: unpack it while it downloads.
                if STREAM and (i == 0 or unpacked[i - 1].is_set()):
                    parent = chains[i - 1] if i else None
                    if await _stream_layer(reg, repo, desc, store, parent, diff_ids[i], reporter, stats):
                        streamed.add(i)
                        ev.set()
                        unpacked[i].set()
                        return
                await _download(reg, repo, desc, store, reporter, stats)
            ev.set()

        async def unpack(i: int, d: str) -> None:
            # In layer order: unpacking consults the layers below (metadata of implicit parents).
            await ready[d].wait()
            if i:
                await unpacked[i - 1].wait()
            if i in streamed:
                return
            reporter.layer(short(d), "Extracting")
            parent = chains[i - 1] if i else None
            await trio.to_thread.run_sync(_unpack, store, d, parent, diff_ids[i], f"layer {d}")
            unpacked[i].set()

        for i, desc in enumerate(layer_descs):
            d = desc["digest"]
            if missing[i] and d not in ready:
                ready[d] = trio.Event()
                if store.blobs.has(d):
                    ready[d].set()
                else:
                    reporter.layer(short(d), "Pulling fs layer", 0, int(desc["size"]))
                    nursery.start_soon(fetch, i, desc, ready[d])
        for i, desc in enumerate(layer_descs):
            if missing[i]:
                nursery.start_soon(unpack, i, desc["digest"])
        for i, desc in enumerate(layer_descs):  # report in layer order, as Docker does
            d = desc["digest"]
            if not missing[i]:
                reporter.layer(short(d), "Already exists")
                continue
            await unpacked[i].wait()
            reporter.layer(short(d), "Pull complete")
    layers = [
        LayerRef(x["digest"], x.get("mediaType", mt.OCI_LAYER_GZIP), int(x["size"]), diff_ids[i])
        for i, x in enumerate(layer_descs)
    ]
    image_id = config_desc["digest"]
    repo_digest = f"{ref.name}@{top}"
    if ref.digest:
        up_to_date = store.images.has(image_id) and repo_digest in store.images.get(image_id).repo_digests
        tags: list[Reference] = []
    else:
        up_to_date = store.images.tags().get(str(ref)) == image_id
        tags = [ref]
    await trio.to_thread.run_sync(
        lambda: store.add_image(
            config_bytes,
            layers,
            tags=tags,
            manifest_bytes=data,
            manifest_media_type=media_type,
            repo_digest=repo_digest,
        )
    )
    reporter.line(f"Digest: {top}")
    return PullResult(ref, top, image_id, up_to_date, stats.blobs, stats.bytes, [x.digest for x in layers])


async def pull_async(
    store: Store,
    name: str,
    *,
    all_tags: bool = False,
    platform: str | None = None,
    options: ClientOptions | None = None,
    reporter: Reporter | None = None,
) -> list[PullResult]:
    """Pull `name` (or, with `all_tags`, every tag of its repository) into `store`."""
    reporter = reporter or Reporter()
    wanted = plat.parse(platform) if platform else None
    bare = reference.parse(name, default_tag=None)
    if all_tags and (bare.tag or bare.digest):
        raise InvalidInput("tag can't be used with --all-tags/-a")
    ref = reference.parse(name)
    results: list[PullResult] = []
    try:
        async with Registry(ref.registry, options) as reg:
            if all_tags:
                tags = await reg.tags(ref.repository)
                if not tags:
                    raise RegistryError(f"repository {ref.familiar_name} has no tags")
                for tag in tags:
                    results.append(await pull_one(store, reg, ref.with_tag(tag), reporter, wanted))
            else:
                results.append(await pull_one(store, reg, ref, reporter, wanted))
    finally:
        reporter.close()
    return results


def pull(store: Store, name: str, **kwargs: object) -> list[PullResult]:
    """Synchronous `pull_async` (runs its own trio loop)."""
    return run(lambda: pull_async(store, name, **kwargs))  # type: ignore[arg-type]


def status_line(results: list[PullResult], name: str, all_tags: bool) -> tuple[str, str]:
    """Docker's closing `Status: …` line and the reference printed last."""
    ref = results[0].reference
    if all_tags:
        target, full = ref.familiar_name, ref.name
    else:
        target, full = ref.familiar, str(ref)
    if all(r.up_to_date for r in results):
        return f"Status: Image is up to date for {target}", full
    return f"Status: Downloaded newer image for {target}", full


__all__ = ["PullResult", "pull", "pull_async", "pull_one", "resolve_manifest", "status_line"]
