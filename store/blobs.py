"""The content-addressed blob store: `blobs/sha256/<hex>`, verified on the way in and out.

A blob is written to a temporary file, hashed while it is written, fsynced and renamed into place
only once its digest is known (and matches the expected one), so a blob path never holds partial
or wrong content, whatever happens to the process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from . import digest as dg
from .errors import NotFound


class BlobWriter:
    """Receives a blob's bytes; `digest` and `size` are final once the `BlobStore.writer` block exits."""

    def __init__(self, fileobj: BinaryIO) -> None:
        self._file = fileobj
        self._hash = hashlib.sha256()
        self.size = 0
        self.digest = ""

    def write(self, data: bytes) -> int:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        """Nothing to do: the blob is flushed and fsynced when its `writer` block ends."""

    def current_digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


class BlobStore:
    """Blobs under `root/blobs/sha256`, temporary files under `root/tmp` (same filesystem)."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "blobs" / "sha256"
        self.tmp = root / "tmp"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.dir / dg.hex_of(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found") from None

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found") from None

    def read(self, digest: str) -> bytes:
        """The blob's bytes, verified against its digest (catches on-disk corruption)."""
        with self.open(digest) as f:
            data = f.read()
        dg.check(dg.of_bytes(data), digest, f"stored blob {digest}")
        return data

    @contextmanager
    def writer(self, expected: str | None = None, what: str = "blob") -> Iterator[BlobWriter]:
        """Write a blob; it becomes visible only if the block succeeds and the digest matches."""
        if expected is not None:
            dg.validate(expected)
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix=tmp_prefix("blob"))
        try:
            with os.fdopen(fd, "wb") as f:
                w = BlobWriter(f)
                yield w
                w.digest = w.current_digest()
                dg.check(w.digest, expected, what)
                f.flush()
                os.fsync(f.fileno())
            os.replace(name, self.path(w.digest))
            fsync_dir(self.path(w.digest).parent)
        except BaseException:
            with _ignore_missing():
                os.unlink(name)
            raise

    def put(self, data: bytes, expected: str | None = None, what: str = "blob") -> str:
        with self.writer(expected, what) as w:
            w.write(data)
        return w.digest

    def ingest(self, stream: BinaryIO, expected: str | None = None, what: str = "blob") -> str:
        with self.writer(expected, what) as w:
            while chunk := stream.read(dg.CHUNK):
                w.write(chunk)
        return w.digest

    def delete(self, digest: str) -> None:
        with _ignore_missing():
            self.path(digest).unlink()

    def all(self) -> list[str]:
        return ["sha256:" + p.name for p in self.dir.iterdir() if dg.is_digest("sha256:" + p.name)]

    def clear_tmp(self) -> list[str]:
        """Remove the temporary files of processes that died mid-write; return their names."""
        gone = []
        for p in self.tmp.iterdir():
            if _owner_alive(p.name) or p.name.startswith("intent-"):  # (intents: `Store.recover`)
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with _ignore_missing():
                    p.unlink()
            gone.append(p.name)
        return gone


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that a rename just made in it survives a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_prefix(kind: str) -> str:
    """Temporary names carry the writer's pid, so leftovers of dead writers can be told apart."""
    return f"{kind}-{os.getpid()}-"


def _owner_alive(name: str) -> bool:
    parts = name.split("-")
    if len(parts) < 3 or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def _ignore_missing() -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        pass
