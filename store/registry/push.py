"""`strata push`: upload an image's blobs the registry lacks, then its manifest (the stored bytes).

Each blob (layers and config, in parallel, bounded) is first checked with HEAD; a blob the image
is known to have in another repository of the same registry (its repo digests) is cross-mounted;
anything else is uploaded (POST, then one PUT, or PATCH chunks and a closing PUT for big blobs).
The manifest goes last, byte for byte as stored, so its digest is the one the store knows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import trio

from store import digest as dg
from store import reference
from store.errors import InvalidInput
from store.reference import Reference
from store.store import Store

from .client import ClientOptions, Registry
from .errors import RegistryError, run
from .progress import Reporter

CHUNK_SIZE = 16 << 20


@dataclass
class PushResult:
    reference: Reference
    digest: str
    size: int
    pushed: int = 0
    mounted: int = 0
    existing: int = 0


def _short(d: str) -> str:
    return dg.hex_of(d)[:12]


def _reader(store: Store, digest: str):  # noqa: ANN202
    path = store.blobs.path(digest)

    def read_chunk(offset: int, n: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(n)
        if len(data) != n:
            raise RegistryError(f"blob {digest} in the store is shorter than expected")
        return data

    return read_chunk


async def push_async(
    store: Store,
    name: str,
    *,
    options: ClientOptions | None = None,
    reporter: Reporter | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> PushResult:
    """Push the image tagged `name` to its registry."""
    reporter = reporter or Reporter()
    ref = reference.parse(name)
    if ref.digest:
        raise InvalidInput(f"cannot push a digest reference: {name}")
    record = store.resolve(str(ref))
    variant = store.variant(record, str(ref))  # the manifest this tag came as, so its digest is kept
    manifest_bytes = store.blobs.read(variant.manifest)
    try:
        manifest = json.loads(manifest_bytes)
        descs = [*reversed(manifest["layers"]), manifest["config"]]
    except (ValueError, KeyError, TypeError):
        raise RegistryError(f"stored manifest of {ref.familiar} is malformed") from None
    sources = []
    for rd in record.repo_digests:
        other = reference.parse(rd)
        if other.registry == ref.registry and other.repository != ref.repository and other.repository not in sources:
            sources.append(other.repository)
    result = PushResult(ref, dg.of_bytes(manifest_bytes), len(manifest_bytes))
    reporter.header(f"The push refers to repository [{ref.name}]")
    try:
        async with Registry(ref.registry, options) as reg:
            await reg.connect()
            repo = ref.repository
            limiter = trio.CapacityLimiter(max(1, reg.options.max_connections))
            scope = f"repository:{repo}:pull,push"

            async def push_blob(desc: dict, is_config: bool) -> None:
                d, size = dg.validate(desc["digest"]), int(desc["size"])
                sid = _short(d)
                show = (lambda *a: None) if is_config else reporter.layer
                async with limiter:
                    if await reg.has_blob(repo, d, scope):
                        show(sid, "Layer already exists")
                        result.existing += 1
                        return
                    location = None
                    for src in sources:
                        location = await reg.mount_blob(repo, d, src)
                        if location is None:
                            show(sid, f"Mounted from {src}")
                            result.mounted += 1
                            return
                        break
                    if not store.blobs.has(d):
                        raise RegistryError(
                            f"blob {d} of {ref.familiar} is not in the store (the layer was shared with an image "
                            "pulled in another compression); pull the image again into an empty store to push it"
                        )
                    done = 0

                    def progress(n: int) -> None:
                        nonlocal done
                        done += n
                        show(sid, "Pushing", done, size)

                    show(sid, "Pushing", 0, size)
                    await reg.upload_blob(repo, d, _reader(store, d), size, location, chunk_size, progress)
                    show(sid, "Pushed")
                    result.pushed += 1

            async with trio.open_nursery() as nursery:
                seen = set()
                for desc in descs:
                    if desc["digest"] in seen:
                        continue
                    seen.add(desc["digest"])
                    if desc is not manifest["config"]:
                        reporter.layer(_short(desc["digest"]), "Preparing")
                    nursery.start_soon(push_blob, desc, desc is manifest["config"])
            digest = await reg.put_manifest(repo, ref.tag or "latest", manifest_bytes, variant.media_type)
    finally:
        reporter.close()
    if digest != result.digest:
        raise RegistryError(f"registry stored the manifest as {digest}, expected {result.digest}")
    config_bytes = store.blobs.read(record.id)
    await trio.to_thread.run_sync(
        lambda: store.add_image(
            config_bytes,
            variant.layers,
            manifest_bytes=manifest_bytes,
            manifest_media_type=variant.media_type,
            repo_digest=f"{ref.name}@{digest}",
        )
    )
    reporter.line(f"{ref.tag}: digest: {digest} size: {len(manifest_bytes)}")
    return result


def push(store: Store, name: str, **kwargs: object) -> PushResult:
    """Synchronous `push_async`."""
    return run(lambda: push_async(store, name, **kwargs))  # type: ignore[arg-type]
