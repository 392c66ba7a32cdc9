"""sha256 digests: parsing, computing and verifying while streaming."""

from __future__ import annotations

import hashlib
import re
from typing import BinaryIO

from .errors import DigestMismatch, InvalidInput

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
CHUNK = 1 << 20


def validate(digest: str) -> str:
    """Return `digest` if it is a well-formed sha256 digest, else raise InvalidInput."""
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise InvalidInput(f"invalid digest: {digest!r}")
    return digest


def is_digest(text: str) -> bool:
    return bool(_DIGEST.match(text))


def hex_of(digest: str) -> str:
    return validate(digest).split(":", 1)[1]


def of_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check(actual: str, expected: str | None, what: str) -> None:
    """Raise DigestMismatch naming `what` when `expected` is given and differs."""
    if expected is not None and actual != expected:
        raise DigestMismatch(f"{what}: digest mismatch (expected {expected}, got {actual})")


class HashingReader:
    """A file-like reader that hashes every byte that passes through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._hash.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        """Read (and hash) whatever is left, e.g. tar padding after the end-of-archive blocks."""
        while self.read(CHUNK):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()
