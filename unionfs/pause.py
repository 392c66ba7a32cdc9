"""Pausing the writes of a mounted container while its layer is captured (`commit --pause`).

The client sends the server SIGUSR1; the server holds every new mutating request at a gate, waits
for those in flight to finish, then creates the flag file (in the work dir) as its answer. SIGUSR2
opens the gate again and removes the flag. Readers are never held.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import tasks

FLAG_NAME = ".strata-paused"
MUTATING = (
    "write", "create", "mknod", "mkdir", "symlink", "link", "setattr", "unlink", "rmdir", "rename",
    "setxattr", "removexattr", "fallocate",
)  # fmt: skip
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND


class WriteGate:
    """Counts mutating requests in flight and holds new ones while closed."""

    def __init__(self) -> None:
        self._open = tasks.Event()
        self._open.set()
        self._inflight = 0
        self._drained = tasks.Event()
        self._drained.set()

    async def enter(self) -> None:
        while not self._open.is_set():
            await self._open.wait()
        self._inflight += 1
        self._drained = tasks.Event()

    def leave(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._drained.set()

    async def close(self) -> None:
        """Hold new requests; return once none is in flight."""
        self._open = tasks.Event()
        if self._inflight:
            await self._drained.wait()

    def reopen(self) -> None:
        self._open.set()


def _gated(gate: WriteGate, fn: Callable, is_write: Callable[..., bool] | None = None) -> Callable:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kw: Any) -> Any:
        if is_write is not None and not is_write(*args):
            return await fn(*args, **kw)
        await gate.enter()
        try:
            return await fn(*args, **kw)
        finally:
            gate.leave()

    return wrapper


def install(ops: Any) -> WriteGate:
    """Route the mutating handlers of an Operations instance through a new gate."""
    gate = WriteGate()
    for name in MUTATING:
        if hasattr(ops, name):
            setattr(ops, name, _gated(gate, getattr(ops, name)))
    ops.open = _gated(gate, ops.open, lambda inode, flags, *rest: bool(flags & _WRITE_FLAGS))
    return gate


def serve_signals(gate: WriteGate, flag: Path) -> None:
    """The server side: SIGUSR1 pauses (answering with the flag file), SIGUSR2 resumes."""

    async def close() -> None:
        await gate.close()
        flag.touch()

    def on_signal(sig: int, frame: object) -> None:
        if sig == signal.SIGUSR1:
            tasks.spawn(close, name="pause")
        else:
            flag.unlink(missing_ok=True)
            gate.reopen()

    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGUSR2, on_signal)


def pause(pid: int, work: Path, timeout: float = 30.0) -> None:
    """Ask the server `pid` to pause and wait until it has (raises TimeoutError otherwise)."""
    flag = work / FLAG_NAME
    flag.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while not flag.exists():
        if time.monotonic() > deadline:
            resume(pid, work)
            raise TimeoutError(f"mount server {pid} did not pause within {timeout:.0f} s")
        time.sleep(0.005)


def resume(pid: int, work: Path) -> None:
    try:
        os.kill(pid, signal.SIGUSR2)
    except ProcessLookupError:
        (work / FLAG_NAME).unlink(missing_ok=True)
