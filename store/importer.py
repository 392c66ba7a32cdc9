"""`import`: a one-layer image from a rootfs tarball (the inverse of `export`)."""

from __future__ import annotations

import json
from typing import BinaryIO

from . import changes as config_changes
from . import reference
from .archive import _host_platform
from .compression import as_layer_blob
from .images import ImageRecord
from .mediatypes import layer_type_for
from .store import Store, now_rfc3339

IMPORT_CHANGES = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "USER", "VOLUME", "WORKDIR")


def import_tarball(
    store: Store,
    stream: BinaryIO,
    source: str,
    tag: str | None = None,
    message: str | None = None,
    changes: list[str] = (),  # type: ignore[assignment]
) -> ImageRecord:
    """Store `stream` (a tar, plain or compressed) as a layer and make an image of it."""
    ref = reference.parse(tag) if tag else None
    config = config_changes.apply({}, list(changes), IMPORT_CHANGES)
    blob, kind = as_layer_blob(stream)
    layer = store.ingest_layer(blob, None, None, layer_type_for(kind), what=f"tarball {source}")
    os_name, arch = _host_platform()
    created = now_rfc3339()
    comment = message or f"Imported from {source}"
    image_config = {
        "architecture": arch,
        "os": os_name,
        "created": created,
        "comment": comment,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        "history": [{"created": created, "comment": comment}],
    }
    data = json.dumps(image_config, separators=(",", ":")).encode()
    return store.add_image(data, [layer], tags=[ref] if ref else [])
