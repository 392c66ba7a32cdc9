"""The store: blobs, layers, images and containers under one root, and the operations on them.

Every mutation runs under an exclusive `flock` on `root/lock`, so two strata processes can work on
one store; readers need no lock because every file becomes visible by an atomic rename.  Each
change keeps the store's invariants at every step — a tag names a record, a record has its layers
and blobs, a layer has its parents (added bottom up, removed top down) — so a kill leaves at most
what no record needs; the intent it left (`journal`) makes the next locked command finish it.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from . import digest as dg
from . import journal, reference
from . import mediatypes as mt
from .blobs import BlobStore, BlobWriter
from .compression import DECOMPRESS_ERRORS, disk_error, open_decompressed
from .containers import Container, ContainerIndex
from .errors import Ambiguous, Conflict, InvalidInput, NotFound
from .images import ImageIndex, ImageRecord, LayerRef, Variant
from .layers import LayerStore, chain_ids


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_root() -> Path:
    """`$STRATA_ROOT`, else the per-user data directory."""
    if env := os.environ.get("STRATA_ROOT"):
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/strata")
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "strata"


class _Tee:
    """Reads from `raw` and copies every byte into a blob writer (store a blob while unpacking it)."""

    def __init__(self, raw: BinaryIO, sink: BlobWriter) -> None:
        self._raw = raw
        self._sink = sink

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._sink.write(data)
        return data

    def drain(self) -> None:
        while self.read(dg.CHUNK):
            pass


@dataclass
class Stack:
    """What the union filesystem needs to mount a container: directories only."""

    container: Container
    image: ImageRecord
    lowers: list[Path]  # topmost first
    upper: Path
    work: Path
    index_cache: Path


@dataclass
class Event:
    """One line of an `rmi`/`prune` report: ("Untagged", ref) or ("Deleted", id)."""

    kind: str
    what: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.what}"


class Store:
    """A strata store rooted at `root` (created on first use)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InvalidInput(f"cannot use store root {self.root}: {e.strerror}") from None
        self.blobs = BlobStore(self.root)
        self.layers = LayerStore(self.root, self.blobs.tmp)
        self.images = ImageIndex(self.root, self.blobs.tmp)
        self.containers = ContainerIndex(self.root, self.blobs.tmp)
        self.index_dir = self.root / "index"
        self.index_dir.mkdir(exist_ok=True)
        self._lease: BinaryIO | None = None
        self._ingest_intent: Path | None = None
        self.recovered: list[str] = []  # what the first lock finished of killed commands' changes
        self.notes: list[str] = []  # what a command should tell its user beside its result

    # -- locking ---------------------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        """The store's exclusive lock; taking it first finishes what killed commands left."""
        with open(self.root / "lock", "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                self.recover()
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def recover(self) -> None:
        """Finish the changes of commands that died (under the lock): the removals an `rmi` or
        `prune` began are completed, the layers and blobs a `pull`/`load`/`commit` added for a record
        it never wrote are collected, and dead writers' temporary files go."""
        pending = journal.interrupted(self.blobs.tmp)
        if pending and self._lease is None:  # (while this process ingests, its new layers look unused)
            for path, kind, data in pending:
                if kind == "add" and isinstance(data, list) and self.images.has(data[0]):
                    self._set_tags(self.images.get(data[0]), [reference.parse(t) for t in data[1]])
                    self.recovered.append(f"finished tagging image {data[0]}")
                if kind == "remove" and isinstance(data, list):
                    for image_id in data:
                        if self.images.has(image_id) and not self.containers_of(image_id):
                            self.untag_all(image_id)
                            self.images.delete(image_id)
                            self.recovered.append(f"finished removing image {image_id}")
                if kind in ("add", "remove"):
                    journal.settle(path)  # (done: a later tag or pull must not be undone by it again)
            with self.gc_allowed() as allowed:
                if allowed:
                    chains, _ = self._sweep()
                    self.recovered += [f"removed unused layer {c}" for c in chains]
                    for path, kind, _data in pending:
                        journal.end(path)
                        if kind == "ingest":
                            self.recovered.append("rolled back an interrupted ingest")
        self.recovered += [f"removed leftover temporary file tmp/{n}" for n in self.blobs.clear_tmp()]

    def untag_all(self, image_id: str) -> list[str]:
        """Remove every tag of *image_id* (under the lock); return the tags removed."""
        table = self.images.tags()
        tags = sorted(t for t, i in table.items() if i == image_id)
        if tags:
            self.images.set_tags({t: i for t, i in table.items() if i != image_id})
        return tags

    def hold_ingest_lease(self) -> None:
        """Keep unreferenced-but-new layers and blobs from garbage collection while this Store adds them.

        A process that ingests holds a shared flock on `gc.lock` from its first ingest until the
        Store is dropped; collection runs only when it can take that lock exclusively, so another
        process's `rmi` never deletes the layers of an image this one is still recording.
        """
        if self._lease is None:
            self._lease = open(self.root / "gc.lock", "a+b")
            fcntl.flock(self._lease.fileno(), fcntl.LOCK_SH)
            # until this process exits: a kill leaves it, and the next command rolls the ingest back
            self._ingest_intent = journal.begin(self.blobs.tmp, "ingest")
            atexit.register(journal.end, self._ingest_intent)

    def abandon_ingest(self) -> None:
        """This process's ingest failed: what it added that no record needs goes now (as a killed
        one's goes at the next command), so that a failed pull, load, import or commit leaves the
        store as it was."""
        if self._lease is None:
            return
        self._lease.close()  # (our own shared lease would keep the collection from running)
        self._lease = None
        with self.lock():
            self._collect()
        if self._ingest_intent is not None:
            journal.end(self._ingest_intent)
            self._ingest_intent = None

    @contextmanager
    def gc_allowed(self) -> Iterator[bool]:
        fd = self._lease.fileno() if self._lease is not None else None
        own = open(self.root / "gc.lock", "a+b") if fd is None else None
        target = fd if fd is not None else own.fileno()  # type: ignore[union-attr]
        try:
            fcntl.flock(target, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
        else:
            try:
                yield True
            finally:
                fcntl.flock(target, fcntl.LOCK_SH if own is None else fcntl.LOCK_UN)
        finally:
            if own is not None:
                own.close()

    # -- reading ---------------------------------------------------------------------------------
    def config(self, image: ImageRecord) -> dict:
        return json.loads(self.blobs.read(image.id))

    def manifest(self, image: ImageRecord) -> bytes:
        return self.blobs.read(image.manifest)

    def variant(self, image: ImageRecord, tag: str | None = None) -> Variant:
        """The manifest to serve for `tag` (a full reference): the one it came as, if all its blobs are
        here (a layer that already existed is never fetched again in another compression), else the
        primary one."""
        wanted = image.tag_manifests.get(tag or "", image.manifest)
        for v in image.variants:
            if v.manifest == wanted and all(self.blobs.has(d) for d in [v.manifest, *(x.digest for x in v.layers)]):
                return v
        return Variant(image.manifest, image.manifest_media_type, image.layers)

    def chain(self, image: ImageRecord) -> list[str]:
        return chain_ids([x.diff_id for x in image.layers])

    def layer_dirs(self, image: ImageRecord) -> list[Path]:
        """The image's layer directories, topmost first (as overlayfs's lowerdir lists them)."""
        return [self.layers.path(c) for c in reversed(self.chain(image))]

    def index_cache(self, image: ImageRecord) -> Path:
        """Where the union filesystem caches the compiled index of this image's layer stack."""
        chain = self.chain(image)
        return self.index_dir / (dg.hex_of(chain[-1]) + ".idx" if chain else "empty.idx")

    def size(self, image: ImageRecord) -> int:
        return sum(self.layers.get(c).size for c in self.chain(image) if self.layers.has(c))

    def tags_of(self, image_id: str) -> list[reference.Reference]:
        return sorted((reference.parse(r) for r, i in self.images.tags().items() if i == image_id), key=str)

    def children(self, image_id: str) -> list[ImageRecord]:
        return [r for r in self.images.all() if r.parent == image_id]

    def resolve(self, name: str) -> ImageRecord:
        """Find an image by reference, digest reference, full ID or unique ID prefix (3+ characters)."""
        text = name.removeprefix("sha256:") if len(name) == 71 else name
        if len(text) == 64 and all(c in "0123456789abcdef" for c in text) and self.images.has("sha256:" + text):
            return self.images.get("sha256:" + text)
        ref = None
        try:
            ref = reference.parse(name)
        except InvalidInput:
            pass
        if ref is not None:
            if ref.digest:
                for r in self.images.all():
                    if f"{ref.name}@{ref.digest}" in r.repo_digests or (r.manifest == ref.digest and not ref.tag):
                        return r
            elif (image_id := self.images.tags().get(str(ref))) is not None:
                return self.images.get(image_id)
        prefix = name.removeprefix("sha256:")
        if len(prefix) >= 3 and all(c in "0123456789abcdef" for c in prefix):
            matches = [r for r in self.images.all() if dg.hex_of(r.id).startswith(prefix)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise Ambiguous(
                    f"image ID prefix {name!r} is ambiguous: " + ", ".join(dg.hex_of(r.id)[:12] for r in matches)
                )
        if ref is None and not name.startswith("sha256:"):
            raise InvalidInput(f"invalid reference format: {name!r}")
        raise NotFound(f"No such image: {name}")

    def containers_of(self, image_id: str) -> list[Container]:
        return [c for c in self.containers.all() if c.image == image_id]

    # -- adding ----------------------------------------------------------------------------------
    def ingest_layer(
        self,
        stream: BinaryIO,
        parent_chain: str | None,
        diff_id: str | None,
        media_type: str,
        expected_digest: str | None = None,
        what: str = "layer",
    ) -> LayerRef:
        """Store a layer blob and unpack it in one pass; each digest is verified while streaming.

        `diff_id` is the expected uncompressed digest (None for a new layer whose digest is not
        known yet). Nothing is kept unless both digests check out.
        """
        if mt.is_foreign(media_type):
            raise InvalidInput(f"{what}: foreign (non-distributable) layers are not supported ({media_type})")
        self.hold_ingest_lease()
        with self.blobs.writer(expected_digest, what) as w:
            tee = _Tee(stream, w)
            chain = None
            if diff_id is not None:
                chain = chain_ids([parent_chain, diff_id])[-1] if parent_chain else diff_id
            if chain is not None and self.layers.has(chain):
                _verify_uncompressed(tee, diff_id, what)
                layer = self.layers.get(chain)
            else:
                layer = self.layers.unpack(tee, parent_chain, diff_id, what)  # type: ignore[arg-type]
            tee.drain()
        return LayerRef(w.digest, media_type, w.size, layer.diff_id)

    def add_image(
        self,
        config_bytes: bytes,
        layers: list[LayerRef],
        tags: list[reference.Reference] = (),  # type: ignore[assignment]
        manifest_bytes: bytes | None = None,
        manifest_media_type: str = mt.OCI_MANIFEST,
        repo_digest: str | None = None,
        parent: str | None = None,
    ) -> ImageRecord:
        """Record an image whose layers are already ingested; tag it. Returns the record."""
        config = _parse_config(config_bytes)
        diff_ids = config["rootfs"]["diff_ids"]
        if diff_ids != [x.diff_id for x in layers]:
            raise InvalidInput("image config's rootfs.diff_ids do not match its layers")
        image_id = self.blobs.put(config_bytes)
        if manifest_bytes is None:
            manifest_bytes = oci_manifest(image_id, len(config_bytes), layers)
            manifest_media_type = mt.OCI_MANIFEST
        manifest_digest = self.blobs.put(manifest_bytes)
        with self.lock():
            old = self.images.get(image_id) if self.images.has(image_id) else None
            record = ImageRecord(
                id=image_id,
                manifest=manifest_digest,
                manifest_media_type=manifest_media_type,
                layers=layers,
                added=old.added if old else now_rfc3339(),
                repo_digests=sorted(set((old.repo_digests if old else []) + ([repo_digest] if repo_digest else []))),
                parent=parent or (old.parent if old else None),
                last_tag_time=old.last_tag_time if old else None,
                variants=[v for v in (old.variants if old else []) if v.manifest != manifest_digest]
                + [Variant(manifest_digest, manifest_media_type, layers)],
                tag_manifests={**(old.tag_manifests if old else {}), **{str(t): manifest_digest for t in tags}},
            )
            for c in self.chain(record):
                if not self.layers.has(c):
                    raise NotFound(f"layer {c} is missing from the store")
            intent = journal.begin(self.blobs.tmp, "add", [image_id, [str(t) for t in tags]]) if tags else None
            self.images.put(record)
            if tags:
                self._set_tags(record, tags)
            if intent is not None:
                journal.end(intent)
        return self.images.get(image_id)

    def _set_tags(self, record: ImageRecord, refs: list[reference.Reference]) -> None:
        table = self.images.tags()
        for ref in refs:
            if ref.digest:
                raise InvalidInput(f"refusing to create a tag with a digest reference: {ref.familiar}")
            table[str(ref)] = record.id
        self.images.set_tags(table)
        record.last_tag_time = now_rfc3339()
        self.images.put(record)

    def tag(self, source: str, target: str) -> None:
        """Tag an image; a tag made from a tag serves the same manifest as its source."""
        ref = reference.parse(target)
        with self.lock():
            record = self.resolve(source)
            named = _named_tag(source, self.images.tags(), record.id)
            if named is not None and named in record.tag_manifests:
                record.tag_manifests[str(ref)] = record.tag_manifests[named]
            self._set_tags(record, [ref])

    # -- removing --------------------------------------------------------------------------------
    def remove(self, name: str, force: bool = False, prune: bool = True) -> list[Event]:
        """`docker rmi`: untag, and delete the image once nothing names or needs it."""
        with self.lock():
            record = self.resolve(name)
            table = self.images.tags()
            tags = [r for r, i in table.items() if i == record.id]
            events: list[Event] = []
            by_tag = _named_tag(name, table, record.id)
            if by_tag is not None and len(tags) > 1:
                del table[by_tag]
                self.images.set_tags(table)
                return [Event("Untagged", reference.parse(by_tag).familiar)]
            if by_tag is None and len({reference.parse(t).name for t in tags}) > 1 and not force:
                raise Conflict(
                    f"conflict: unable to delete {dg.hex_of(record.id)[:12]} (must be forced) - "
                    "image is referenced in multiple repositories"
                )
            if self.children(record.id):
                raise Conflict(
                    f"conflict: unable to delete {dg.hex_of(record.id)[:12]} (cannot be forced) - "
                    "image has dependent child images"
                )
            users = self.containers_of(record.id)
            if users and not force:
                raise Conflict(
                    f"conflict: unable to remove repository reference {name!r} (must force) - container "
                    f"{users[0].id[:12]} is using its referenced image {dg.hex_of(record.id)[:12]}"
                )
            intent = None if users else journal.begin(self.blobs.tmp, "remove", [record.id])
            for t in sorted(tags):
                del table[t]
                events.append(Event("Untagged", reference.parse(t).familiar))
            self.images.set_tags(table)
            for d in record.repo_digests:
                events.append(Event("Untagged", reference.parse(d).familiar))
            if intent is None:  # forced: the containers keep the (now untagged) image
                return events
            events += self._delete_image(record, prune)
            journal.end(intent)
            return events

    def _delete_image(self, record: ImageRecord, prune: bool) -> list[Event]:
        events = [Event("Deleted", record.id)]
        self.images.delete(record.id)
        events += [Event("Deleted", c) for c in self._collect()[0]]
        parent = record.parent
        if prune and parent and self.images.has(parent):
            p = self.images.get(parent)
            if not self.tags_of(p.id) and not self.children(p.id) and not self.containers_of(p.id):
                events += self._delete_image(p, prune)
        return events

    def _collect(self) -> tuple[list[str], int]:
        """Delete layers and blobs no image needs any more; return deleted chain IDs and bytes freed.

        Skipped (left for a later rmi or prune) while another process is ingesting.
        """
        with self.gc_allowed() as allowed:
            if not allowed:
                note = (
                    "unused layers and blobs kept: another strata process is adding to the store "
                    "(the next rmi or prune removes them)"
                )
                if note not in self.notes:
                    self.notes.append(note)
                return [], 0
            intent = journal.begin(self.blobs.tmp, "collect")
            swept = self._sweep()
            journal.end(intent)
            return swept

    def _sweep(self) -> tuple[list[str], int]:
        """Delete what no record needs: layers top down (a layer left always has its parents), then
        blobs, compiled indexes and the union filesystem's tables of deleted layers."""
        records = self.images.all()
        live_chains = {c for r in records for c in self.chain(r)}
        live_blobs = {b for r in records for b in r.blobs}
        freed = 0
        deleted = []
        for layer in self.layers.top_down():
            if layer.chain_id not in live_chains:
                freed += layer.size
                self.layers.delete(layer.chain_id)
                deleted.append(layer.chain_id)
        for b in self.blobs.all():
            if b not in live_blobs:
                freed += self.blobs.size(b)
                self.blobs.delete(b)
        for idx in self.index_dir.glob("*.idx"):
            if "sha256:" + idx.stem not in live_chains:
                idx.unlink(missing_ok=True)
        if deleted:
            from unionfs.index import prune_tables  # (directories only: no FUSE)

            prune_tables(self.index_dir)
        return deleted, freed

    def prune(self, everything: bool = False, keep: set[str] | None = None) -> tuple[list[Event], int]:
        """`docker image prune`: remove dangling images (with `everything`, all unused ones).

        `keep` holds image IDs a filter excluded from pruning.
        """
        events: list[Event] = []
        with self.lock():
            before = self._disk_bytes()
            used = {c.image for c in self.containers.all()}
            table = self.images.tags()
            for record in self.images.all():
                if not self.images.has(record.id) or record.id in used or (keep and record.id in keep):
                    continue
                tagged = [t for t, i in table.items() if i == record.id]
                if (tagged and not everything) or self.children(record.id):
                    continue
                intent = journal.begin(self.blobs.tmp, "remove", [record.id])
                for t in tagged:
                    del table[t]
                    events.append(Event("Untagged", reference.parse(t).familiar))
                self.images.set_tags(table)
                events += self._delete_image(record, prune=False)
                journal.end(intent)
            self._collect()
            return events, before - self._disk_bytes()

    def _disk_bytes(self) -> int:
        return sum(self.blobs.size(b) for b in self.blobs.all()) + sum(x.size for x in self.layers.all())

    # -- containers ------------------------------------------------------------------------------
    def create_container(self, image_name: str, name: str | None = None, throwaway: bool = False) -> Container:
        with self.lock():
            record = self.resolve(image_name)
            cid = secrets.token_hex(32)
            c = Container(
                id=cid,
                name=name or _random_name(),
                image=record.id,
                image_ref=image_name,
                created=now_rfc3339(),
                throwaway=throwaway,
            )
            self.containers.create(c)
            return c

    def stack(self, name: str) -> Stack:
        """The layer directories of container `name` (its writable layer must exist)."""
        c = self.containers.find(name)
        upper = self.containers.upper(c.id)
        if not upper.is_dir():
            raise NotFound(f"container {c.name}: its writable layer {upper} is missing")
        image = self.images.get(c.image)
        return Stack(c, image, self.layer_dirs(image), upper, self.containers.work(c.id), self.index_cache(image))

    def remove_container(self, c: Container) -> None:
        with self.lock():
            self.containers.delete(c.id)


def oci_manifest(config_digest: str, config_size: int, layers: list[LayerRef]) -> bytes:
    """A canonical OCI manifest for a config and layer blobs."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": mt.to_oci(x.media_type), "digest": x.digest, "size": x.size} for x in layers],
    }
    return json.dumps(manifest, separators=(",", ":")).encode()


def _verify_uncompressed(stream: BinaryIO, diff_id: str | None, what: str) -> None:
    try:
        plain, _ = open_decompressed(stream)
        hashing = dg.HashingReader(plain)
        hashing.drain()
    except DECOMPRESS_ERRORS as e:
        if disk_error(e):
            raise
        raise InvalidInput(f"{what}: corrupt or truncated data ({e})") from None
    dg.check(hashing.digest, diff_id, f"{what} (uncompressed)")


def _parse_config(data: bytes) -> dict:
    try:
        config = json.loads(data)
        if not isinstance(config.get("rootfs", {}).get("diff_ids"), list):
            raise ValueError("no rootfs.diff_ids")
        for d in config["rootfs"]["diff_ids"]:
            dg.validate(d)
    except (ValueError, AttributeError, InvalidInput) as e:
        raise InvalidInput(f"invalid image config: {e}") from None
    return config


def _named_tag(name: str, table: dict[str, str], image_id: str) -> str | None:
    """The tag `name` refers to, if the user named the image by a tag of it."""
    try:
        ref = reference.parse(name)
    except InvalidInput:
        return None
    return str(ref) if not ref.digest and table.get(str(ref)) == image_id else None


_ADJECTIVES = ["brave", "calm", "eager", "fond", "keen", "lucid", "merry", "quiet", "sharp", "witty"]
_NAMES = ["babbage", "curie", "dijkstra", "hopper", "knuth", "lovelace", "noether", "ritchie", "turing"]


def _random_name() -> str:
    return f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_NAMES)}_{secrets.token_hex(2)}"
