"""The blob store never shows partial or wrong content."""

import hashlib
import io
from pathlib import Path

import pytest

from store.blobs import BlobStore
from store.errors import DigestMismatch


def test_put_and_verified_read(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    data = b"hello blob"
    d = blobs.put(data)
    assert d == "sha256:" + hashlib.sha256(data).hexdigest()
    assert blobs.read(d) == data
    assert blobs.path(d).read_bytes() == data


def test_mismatch_keeps_nothing(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
    with pytest.raises(DigestMismatch):
        blobs.ingest(io.BytesIO(b"data"), expected=wrong)
    assert not blobs.has(wrong)
    assert list(blobs.dir.iterdir()) == []
    assert list(blobs.tmp.iterdir()) == []


def test_interrupted_write_leaves_nothing(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    with pytest.raises(RuntimeError):
        with blobs.writer() as w:
            w.write(b"partial")
            raise RuntimeError("killed")
    assert list(blobs.dir.iterdir()) == [] and list(blobs.tmp.iterdir()) == []


def test_corruption_on_disk_is_detected(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    d = blobs.put(b"good")
    blobs.path(d).write_bytes(b"bad!")
    with pytest.raises(DigestMismatch):
        blobs.read(d)
