"""Run pyfuse3's main loop in the calling thread, without trio, for a server with one worker.

A read-only mount never waits inside a request (no copy-up, fsync or paused write), so its
handlers are coroutines that finish at their first ``send``. Driving them directly spares the
server importing trio, about 90 ms of every mount's start-up. This module is what pyfuse3 sees
as ``trio`` (the hook pyfuse3.asyncio uses too); it supplies only what pyfuse3's loop calls.
"""

from __future__ import annotations

import os
import select
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

_closing: set[int] = set()
_wakeup: int = -1  # read end of the signal wake-up pipe while run() runs


class ClosedResourceError(Exception):
    """The FUSE descriptor is being closed (pyfuse3.terminate())."""


class _Lock:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


def Lock() -> _Lock:  # noqa: N802 - the name pyfuse3 calls
    """A lock that never contends: there is only one worker."""
    return _Lock()


class _Task:
    name = "pyfuse-serial"


def current_task() -> _Task:
    return _Task()


def current_trio_token() -> None:
    return None


async def wait_readable(fd: int) -> None:
    """Block until *fd* is readable; a signal handler that calls pyfuse3.terminate() ends it."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.register(_wakeup, select.POLLIN)
    while fd not in _closing:
        ready = dict(poller.poll())
        if _wakeup in ready:
            while True:  # drain: the C-level handler wrote one byte per signal
                try:
                    os.read(_wakeup, 64)
                except BlockingIOError:
                    break
        if fd in ready and fd not in _closing:
            return
    raise ClosedResourceError


def notify_closing(fd: int) -> None:
    _closing.add(fd)


class _Nursery:
    """Runs what was started, one after the other, when the ``async with`` block ends."""

    def __init__(self) -> None:
        self._pending: list[tuple[Callable[..., Awaitable[Any]], tuple]] = []

    async def __aenter__(self) -> _Nursery:
        return self

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str | None = None) -> None:
        self._pending.append((fn, args))

    async def __aexit__(self, *exc: object) -> None:
        while self._pending:
            fn, args = self._pending.pop(0)
            await fn(*args)


def open_nursery() -> _Nursery:
    return _Nursery()


lowlevel = from_thread = sys.modules[__name__]


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    """Run *main* (e.g. ``lambda: pyfuse3.main(1, 1)``) to its end in this thread.

    Signals still reach their Python handlers: a wake-up pipe makes the blocking poll return.
    Raises RuntimeError if anything awaited something that would have had to wait.
    """
    global _wakeup
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    _wakeup = r
    _closing.clear()
    coro = main()
    try:
        coro.send(None)  # type: ignore[attr-defined]
    except StopIteration as done:
        return done.value
    finally:
        signal.set_wakeup_fd(old)
        _wakeup = -1
        os.close(r)
        os.close(w)
    coro.close()  # type: ignore[attr-defined]
    raise RuntimeError("a request handler waited on something; only a trio loop can serve it")


def install(pyfuse3_module: Any) -> None:
    """Make pyfuse3 use this module in place of trio (before pyfuse3.main() first runs)."""
    pyfuse3_module.trio = sys.modules[__name__]
