"""Reading a file from an http(s) URL as a stream (`import URL`), as Docker's `import` fetches one."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO

from .errors import InvalidInput

Progress = Callable[[int, int | None], None]  # (bytes so far, total if the server said)


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


class _Chunks(io.RawIOBase):
    """A reader over an iterator of byte chunks, reporting progress as it goes."""

    def __init__(self, chunks: Iterator[bytes], progress: Progress | None, total: int | None) -> None:
        super().__init__()
        self._chunks, self._progress, self._total = chunks, progress, total
        self._rest, self.done = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._rest:
            self._rest = next(self._chunks, b"")
            self.done += len(self._rest)
            if self._progress is not None and self._rest:
                self._progress(self.done, self._total)
        n = min(len(buffer), len(self._rest))
        buffer[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n


@contextmanager
def fetch(url: str, progress: Progress | None = None, timeout: float = 60.0) -> Iterator[BinaryIO]:
    """The body of *url*, streamed (redirects followed, the environment's proxies used); any
    failure, before or while reading, is an :class:`InvalidInput` naming the URL."""
    import httpx  # (only this command needs it)

    try:
        headers = {"Accept-Encoding": "identity"}  # the file's own bytes
        with httpx.stream("GET", url, headers=headers, follow_redirects=True, timeout=timeout) as r:
            if r.status_code != 200:
                raise InvalidInput(f"cannot fetch {url}: HTTP {r.status_code} {r.reason_phrase}")
            total = int(r.headers.get("content-length") or 0) or None
            yield io.BufferedReader(_Chunks(r.iter_raw(), progress, total), 1 << 20)  # type: ignore[arg-type]
    except (httpx.HTTPError, httpx.InvalidURL) as e:
        raise InvalidInput(f"cannot fetch {url}: {e or type(e).__name__}") from None
