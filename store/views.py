"""Docker-shaped views of the store: `images` rows, `inspect` JSON, `history` rows, `system df`."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from . import digest as dg
from . import reference
from .errors import InvalidInput
from .images import ImageRecord
from .prune import tree_size
from .store import Store


def parse_time(text: str | None) -> datetime:
    """RFC 3339 (any fraction length) → aware datetime; missing or bad → the epoch."""
    if not text:
        return datetime.fromtimestamp(0, UTC)
    try:
        head, _, frac = text.rstrip("Z").partition(".")
        offset = ""
        for sign in "+-":
            if sign in frac:
                frac, offset = frac.split(sign, 1)[0], sign + frac.split(sign, 1)[1]
        if not frac and ("+" in head[10:] or "-" in head[10:]):
            return datetime.fromisoformat(head)
        base = datetime.fromisoformat(head + (offset or "+00:00"))
        return base.replace(microsecond=int((frac + "000000")[:6])) if frac else base
    except ValueError:
        return datetime.fromtimestamp(0, UTC)


@dataclass
class ImageRow:
    id: str
    repository: str
    tag: str
    digest: str
    created: datetime
    size: int
    labels: dict[str, str]
    dangling: bool


def image_rows(
    store: Store, show_all: bool = False, filters: list[str] = (), repo: str | None = None
) -> list[ImageRow]:  # type: ignore[assignment]
    """One row per (image, tag), newest first; untagged images as `<none>` rows.

    Filters: dangling=true|false, before=IMG, since=IMG, reference=PATTERN, label=K[=V].
    """
    records = store.images.all()
    tags = store.images.tags()
    parents = {r.parent for r in records if r.parent}
    checks = [_filter(store, f) for f in filters]
    rows: list[ImageRow] = []
    for r in records:
        config = store.config(r)
        created = parse_time(config.get("created"))
        labels = (config.get("config") or {}).get("Labels") or {}
        refs = sorted((reference.parse(t) for t, i in tags.items() if i == r.id), key=str)
        size = store.size(r)
        digests = {reference.parse(d).name: d.split("@", 1)[1] for d in r.repo_digests}
        if not refs:
            if r.id in parents and not show_all:
                continue  # an intermediate image, shown with -a only
            names = [(d.split("@", 1)[0], "<none>") for d in r.repo_digests] or [("<none>", "<none>")]
            for name, tag in names:
                repo_name = reference.parse(name).familiar_name if name != "<none>" else name
                digest = digests.get(reference.parse(name).name, "<none>") if name != "<none>" else "<none>"
                rows.append(ImageRow(r.id, repo_name, tag, digest, created, size, labels, r.id not in parents))
        for ref in refs:
            rows.append(
                ImageRow(
                    r.id,
                    ref.familiar_name,
                    ref.tag or "<none>",
                    _tag_digest(r, ref, digests),
                    created,
                    size,
                    labels,
                    False,
                )
            )
    if repo:
        want = reference.parse(repo, default_tag=None)
        rows = [x for x in rows if x.repository == want.familiar_name and (want.tag is None or x.tag == want.tag)]
    rows = [x for x in rows if all(check(x) for check in checks)]
    rows.sort(key=lambda x: (x.created, x.id), reverse=True)
    return rows


def _tag_digest(r: ImageRecord, ref: reference.Reference, by_repo: dict[str, str]) -> str:
    """The digest this tag has in its repository: the manifest it came as, if pushed or pulled there."""
    own = r.tag_manifests.get(str(ref))
    if own and f"{ref.name}@{own}" in r.repo_digests:
        return own
    return by_repo.get(ref.name, "<none>")


def _filter(store: Store, text: str) -> Callable[[ImageRow], bool]:
    key, sep, value = text.partition("=")
    if not sep:
        raise InvalidInput(f"bad filter {text!r}: expected KEY=VALUE")
    if key == "dangling":
        if value not in ("true", "false", "1", "0"):
            raise InvalidInput(f"invalid filter 'dangling={value}'")
        want = value in ("true", "1")
        return lambda row: row.dangling == want
    if key in ("before", "since"):
        pivot = parse_time(store.config(store.resolve(value)).get("created"))
        return (lambda row: row.created < pivot) if key == "before" else (lambda row: row.created > pivot)
    if key == "reference":

        def match(row: ImageRow) -> bool:
            name = f"{row.repository}:{row.tag}"
            return fnmatch.fnmatchcase(name, value) or fnmatch.fnmatchcase(row.repository, value)

        return match
    if key == "label":
        k, has_v, v = value.partition("=")
        return lambda row: k in row.labels and (not has_v or row.labels[k] == v)
    raise InvalidInput(f"invalid filter {key!r} (known: dangling, before, since, reference, label)")


def inspect(store: Store, r: ImageRecord) -> dict:
    """`docker image inspect` JSON for one image."""
    config = store.config(r)
    tags = store.tags_of(r.id)
    return {
        "Id": r.id,
        "RepoTags": [t.familiar for t in tags],
        "RepoDigests": [reference.parse(d).familiar for d in r.repo_digests],
        "Parent": r.parent or "",
        "Comment": config.get("comment", ""),
        "Created": config.get("created", ""),
        "DockerVersion": config.get("docker_version", ""),
        "Author": config.get("author", ""),
        "Config": config.get("config") or {},
        "Architecture": config.get("architecture", ""),
        **({"Variant": config["variant"]} if config.get("variant") else {}),
        "Os": config.get("os", ""),
        "Size": store.size(r),
        "GraphDriver": {"Name": "strata", "Data": {"LowerDir": ":".join(map(str, store.layer_dirs(r)))}},
        "RootFS": {"Type": "layers", "Layers": list(config["rootfs"]["diff_ids"])},
        "Metadata": {"LastTagTime": r.last_tag_time or "0001-01-01T00:00:00Z"},
        "Descriptor": {"mediaType": r.manifest_media_type, "digest": r.manifest, "size": store.blobs.size(r.manifest)},
    }


@dataclass
class HistoryRow:
    id: str  # image ID or "<missing>"
    created: datetime
    created_by: str
    size: int
    comment: str
    tags: list[str]


def history(store: Store, r: ImageRecord) -> list[HistoryRow]:
    """Rows newest first; IDs filled along the local parent chain, as Docker does."""
    config = store.config(r)
    chains = store.chain(r)
    rows: list[HistoryRow] = []
    used = 0
    for h in config.get("history") or []:
        size = 0
        if not h.get("empty_layer"):
            if used < len(chains) and store.layers.has(chains[used]):
                size = store.layers.get(chains[used]).size
            used += 1
        rows.insert(
            0,
            HistoryRow(
                "<missing>", parse_time(h.get("created")), h.get("created_by", ""), size, h.get("comment", ""), []
            ),
        )
    image: ImageRecord | None = r
    for row in rows:
        if image is None:
            break
        row.id = image.id
        row.tags = [t.familiar for t in store.tags_of(image.id)]
        image = store.images.get(image.parent) if image.parent and store.images.has(image.parent) else None
    return rows


@dataclass
class DfRow:
    type: str
    total: int
    active: int
    size: int
    reclaimable: int


def disk_usage(store: Store) -> tuple[list[DfRow], dict]:
    """`system df`: images, containers, layers (a shared layer counted once), and verbose detail."""
    records = store.images.all()
    containers = store.containers.all()
    used_images = {c.image for c in containers}
    layer_sizes = {x.chain_id: x.size for x in store.layers.all()}
    active_chains = {c for r in records if r.id in used_images for c in store.chain(r)}
    all_chains = {c for r in records for c in store.chain(r)}
    images_size = sum(layer_sizes.get(c, 0) for c in all_chains)
    reclaim_images = sum(layer_sizes.get(c, 0) for c in all_chains - active_chains)
    ctr_sizes = {c.id: tree_size(store.containers.upper(c.id)) for c in containers}
    mounted = [c for c in containers if c.mountpoint]
    rows = [
        DfRow("Images", len(records), len(used_images & {r.id for r in records}), images_size, reclaim_images),
        DfRow(
            "Containers",
            len(containers),
            len(mounted),
            sum(ctr_sizes.values()),
            sum(v for k, v in ctr_sizes.items() if k not in {c.id for c in mounted}),
        ),
        DfRow(
            "Layers",
            len(layer_sizes),
            len(active_chains),
            sum(layer_sizes.values()),
            sum(v for k, v in layer_sizes.items() if k not in active_chains),
        ),
        _index_row(store, {store.index_cache(r) for r in records if r.id in used_images}),
    ]
    detail = {
        "images": [
            {
                "id": r.id,
                "tags": [t.familiar for t in store.tags_of(r.id)],
                "size": store.size(r),
                "shared": sum(
                    layer_sizes.get(c, 0)
                    for c in store.chain(r)
                    if any(c in store.chain(o) for o in records if o.id != r.id)
                ),
                "containers": sum(1 for c in containers if c.image == r.id),
            }
            for r in records
        ],
        "containers": [{"id": c.id, "name": c.name, "image": c.image_ref, "size": ctr_sizes[c.id]} for c in containers],
        "layers": [{"chain_id": k, "size": v, "active": k in active_chains} for k, v in sorted(layer_sizes.items())],
    }
    return rows, detail


def _index_row(store: Store, active: set[Path]) -> DfRow:
    """The union filesystem's caches in the store: each image stack's compiled index (rebuilt on
    demand, so reclaimable unless a container's image uses it) and the layers' tables beside them
    (counted in the size; they go with their layers)."""
    caches = {}
    for p in store.index_dir.glob("*.idx"):
        try:
            caches[p] = p.stat().st_size
        except FileNotFoundError:  # removed meanwhile (by image prune, say)
            pass
    return DfRow(
        "Index cache",
        len(caches),
        len(caches.keys() & active),
        tree_size(store.index_dir),
        sum(v for p, v in caches.items() if p not in active),
    )


def short_id(image_id: str) -> str:
    return dg.hex_of(image_id)[:12]
