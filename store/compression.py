"""Transparent decompression of layer and archive streams (gzip via isal, zstd, or plain)."""

from __future__ import annotations

import io
from typing import BinaryIO

import zstandard
from isal import igzip

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class Prefixed(io.RawIOBase):
    """A reader that yields `prefix` first, then the rest of `raw` (to peek at magic bytes)."""

    def __init__(self, prefix: bytes, raw: BinaryIO) -> None:
        super().__init__()
        self._prefix = prefix
        self._raw = raw

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, n: int = -1) -> bytes:
        if not self._prefix:
            return self._raw.read(n)
        if n < 0:
            data, self._prefix = self._prefix + self._raw.read(), b""
            return data
        data, self._prefix = self._prefix[:n], self._prefix[n:]
        if len(data) < n:
            data += self._raw.read(n - len(data))
        return data

    def readable(self) -> bool:
        return True

    def readall(self) -> bytes:
        return self.read(-1)


def detect(prefix: bytes) -> str:
    """'gzip', 'zstd' or 'none' from a stream's first bytes."""
    if prefix.startswith(GZIP_MAGIC):
        return "gzip"
    if prefix.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


def open_decompressed(raw: BinaryIO) -> tuple[BinaryIO, str]:
    """Wrap `raw` so reads return decompressed bytes; also return the detected compression."""
    prefix = b""
    while len(prefix) < 4:
        more = raw.read(4 - len(prefix))
        if not more:
            break
        prefix += more
    kind = detect(prefix)
    stream = Prefixed(prefix, raw)
    if kind == "gzip":
        return igzip.GzipFile(fileobj=stream, mode="rb"), kind  # type: ignore[arg-type]
    if kind == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True), kind  # type: ignore[return-value]
    return stream, kind  # type: ignore[return-value]


DECOMPRESS_ERRORS: tuple[type[BaseException], ...] = (EOFError, zstandard.ZstdError, OSError, ValueError)


def disk_error(e: BaseException) -> bool:
    """Whether *e*, raised while decompressing, is the system's (ENOSPC, EIO) and not the data's."""
    return isinstance(e, OSError) and e.errno is not None
