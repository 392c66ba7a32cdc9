"""Image records and tags.

An image is identified by its config digest (as in Docker). Its record, `images/<id-hex>.json`,
names its config, its manifest and its layer blobs; the tags live in `tags.json`, replaced
atomically. Config and manifest bytes are blobs like any other.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import digest as dg
from .blobs import fsync_dir, tmp_prefix
from .errors import NotFound


@dataclass
class LayerRef:
    """One layer as an image refers to it: the stored blob and the uncompressed diffID."""

    digest: str
    media_type: str
    size: int
    diff_id: str


@dataclass
class Variant:
    """One manifest of an image: the same config can come as gzip, zstd or plain layer blobs."""

    manifest: str
    media_type: str
    layers: list[LayerRef]


@dataclass
class ImageRecord:
    id: str
    manifest: str
    manifest_media_type: str
    layers: list[LayerRef]
    added: str
    repo_digests: list[str] = field(default_factory=list)
    parent: str | None = None
    last_tag_time: str | None = None
    variants: list[Variant] = field(default_factory=list)  # every manifest seen, the primary one last
    tag_manifests: dict[str, str] = field(default_factory=dict)  # tag → the manifest it was pulled/loaded as

    @staticmethod
    def from_json(data: dict) -> ImageRecord:
        data = dict(data)
        data["layers"] = [LayerRef(**x) for x in data["layers"]]
        variants = data.get("variants", [])
        data["variants"] = [
            Variant(v["manifest"], v["media_type"], [LayerRef(**x) for x in v["layers"]]) for v in variants
        ]
        return ImageRecord(**data)

    @property
    def blobs(self) -> set[str]:
        out = {self.id, self.manifest, *(x.digest for x in self.layers)}
        for v in self.variants:
            out |= {v.manifest, *(x.digest for x in v.layers)}
        return out


def atomic_write(path: Path, data: bytes, tmp: Path) -> None:
    """Replace *path* with *data*: all of it or none, durable once this returns."""
    fd, name = tempfile.mkstemp(dir=tmp, prefix=tmp_prefix("rec"))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(name, path)
        fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(name):
            os.unlink(name)
        raise


class ImageIndex:
    """Image records and the tag table, on disk."""

    def __init__(self, root: Path, tmp: Path) -> None:
        self.dir = root / "images"
        self.tags_file = root / "tags.json"
        self.tmp = tmp
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, image_id: str) -> Path:
        return self.dir / f"{dg.hex_of(image_id)}.json"

    def has(self, image_id: str) -> bool:
        return self._path(image_id).is_file()

    def get(self, image_id: str) -> ImageRecord:
        try:
            return ImageRecord.from_json(json.loads(self._path(image_id).read_text()))
        except FileNotFoundError:
            raise NotFound(f"No such image: {image_id}") from None

    def put(self, record: ImageRecord) -> None:
        atomic_write(self._path(record.id), json.dumps(asdict(record), indent=1).encode(), self.tmp)

    def delete(self, image_id: str) -> None:
        try:
            self._path(image_id).unlink()
        except FileNotFoundError:
            pass

    def all(self) -> list[ImageRecord]:
        return [ImageRecord.from_json(json.loads(p.read_text())) for p in sorted(self.dir.glob("*.json"))]

    def tags(self) -> dict[str, str]:
        """Full reference (`docker.io/library/x:tag`) → image ID."""
        try:
            return json.loads(self.tags_file.read_text())
        except FileNotFoundError:
            return {}

    def set_tags(self, tags: dict[str, str]) -> None:
        atomic_write(self.tags_file, json.dumps(dict(sorted(tags.items())), indent=1).encode(), self.tmp)
