"""The trio stand-in that read-only mount servers run pyfuse3's loop with."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from unionfs import serial_loop


class _Suspend:
    """An awaitable that suspends once, as a trio checkpoint does."""

    def __await__(self):
        yield "checkpoint"


def test_run_returns_what_a_never_waiting_coroutine_returns() -> None:
    async def main() -> int:
        async with serial_loop.open_nursery() as nursery:
            seen: list[int] = []

            async def child(k: int) -> None:
                seen.append(k)

            nursery.start_soon(child, 1, name="a")
            nursery.start_soon(child, 2)
        async with serial_loop.Lock():
            return sum(seen)

    assert serial_loop.run(main) == 3


def test_run_refuses_a_coroutine_that_would_wait() -> None:
    async def main() -> None:
        await _Suspend()

    with pytest.raises(RuntimeError, match="waited"):
        serial_loop.run(main)


def test_wait_readable_returns_once_data_arrives() -> None:
    r, w = os.pipe()
    try:
        threading.Timer(0.05, os.write, (w, b"x")).start()

        async def main() -> bytes:
            await serial_loop.wait_readable(r)
            return os.read(r, 1)

        assert serial_loop.run(main) == b"x"
    finally:
        os.close(r)
        os.close(w)


def test_a_signal_handler_that_closes_the_fd_ends_the_wait() -> None:
    """What pyfuse3.terminate() does from a SIGTERM handler: the blocked poll must return."""
    r, w = os.pipe()
    old = signal.signal(signal.SIGUSR1, lambda *_: serial_loop.notify_closing(r))
    backstop = threading.Timer(10, os.write, (w, b"x"))  # without the wake-up the poll would sleep until this
    try:
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        backstop.start()

        async def main() -> None:
            await serial_loop.wait_readable(r)

        with pytest.raises(serial_loop.ClosedResourceError):
            serial_loop.run(main)
        assert backstop.is_alive(), "the signal did not wake the poll"
    finally:
        backstop.cancel()
        signal.signal(signal.SIGUSR1, old)
        os.close(r)
        os.close(w)
