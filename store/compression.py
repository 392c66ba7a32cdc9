"""Transparent decompression of layer and archive streams: gzip (through isal), zstd, bzip2, xz, or
plain. Each is read as a stream: nothing is decompressed ahead of the reader."""

from __future__ import annotations

import bz2
import io
import lzma
from typing import BinaryIO

import zstandard
from isal import igzip

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BZIP2_MAGIC = b"BZh"
XZ_MAGIC = b"\xfd7zXZ\x00"
MAGIC_BYTES = 6  # (the longest of them)
UNNAMED = ("bzip2", "xz")  # compressions no OCI layer media type names


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
    """'gzip', 'zstd', 'bzip2', 'xz' or 'none' from a stream's first bytes."""
    for kind, magic in (("gzip", GZIP_MAGIC), ("zstd", ZSTD_MAGIC), ("bzip2", BZIP2_MAGIC), ("xz", XZ_MAGIC)):
        if prefix.startswith(magic):
            return kind
    return "none"


def open_decompressed(raw: BinaryIO) -> tuple[BinaryIO, str]:
    """Wrap `raw` so reads return decompressed bytes; also return the detected compression."""
    prefix = b""
    while len(prefix) < MAGIC_BYTES:
        more = raw.read(MAGIC_BYTES - len(prefix))
        if not more:
            break
        prefix += more
    kind = detect(prefix)
    stream = Prefixed(prefix, raw)
    if kind == "gzip":
        return igzip.GzipFile(fileobj=stream, mode="rb"), kind  # type: ignore[arg-type]
    if kind == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True), kind  # type: ignore[return-value]
    if kind == "bzip2":
        return bz2.BZ2File(stream), kind  # type: ignore[arg-type]
    if kind == "xz":
        return lzma.LZMAFile(stream), kind  # type: ignore[arg-type]
    return stream, kind  # type: ignore[return-value]


def as_layer_blob(raw: BinaryIO) -> tuple[BinaryIO, str]:
    """*raw* as a layer blob an image can name, and the compression found: gzip, zstd and plain tar
    pass as they are; bzip2 and xz (:data:`UNNAMED`: no OCI media type) are decompressed to plain tar."""
    head = raw.read(MAGIC_BYTES)
    kind = detect(head)
    if kind in UNNAMED:
        return open_decompressed(Prefixed(head, raw))[0], kind
    return Prefixed(head, raw), kind  # type: ignore[return-value]


DECOMPRESS_ERRORS: tuple[type[BaseException], ...] = (
    EOFError,
    zstandard.ZstdError,
    lzma.LZMAError,
    OSError,
    ValueError,
)


def disk_error(e: BaseException) -> bool:
    """Whether *e*, raised while decompressing, is the system's (ENOSPC, EIO) and not the data's."""
    return isinstance(e, OSError) and e.errno is not None
