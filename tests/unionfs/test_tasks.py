"""The task loop that mount servers run pyfuse3's loop on, in place of trio."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from unionfs import tasks


def test_nursery_waits_for_its_tasks_and_returns_mains_value() -> None:
    seen: list[int] = []

    async def child(k: int) -> None:
        await tasks.run_sync(time.sleep, 0.01 * k)
        seen.append(k)

    async def main() -> int:
        async with tasks.open_nursery() as nursery:
            for k in (3, 1, 2):
                nursery.start_soon(child, k, name=f"c{k}")
        return sum(seen)

    assert tasks.run(main) == 6
    assert seen == [1, 2, 3]  # the threads ran side by side: the shortest finished first


def test_a_task_waiting_on_a_thread_lets_the_others_run() -> None:
    order: list[str] = []
    release = threading.Event()

    async def slow() -> None:
        await tasks.run_sync(release.wait, 10)
        order.append("slow")

    async def fast() -> None:
        order.append("fast")
        release.set()

    async def main() -> None:
        async with tasks.open_nursery() as n:
            n.start_soon(slow)
            n.start_soon(fast)

    tasks.run(main)
    assert order == ["fast", "slow"]


def test_a_thread_s_exception_reaches_its_task() -> None:
    async def main() -> str:
        try:
            await tasks.run_sync(os.fstat, 987654)
        except OSError as e:
            return e.strerror or ""
        return "no error"

    assert "Bad file descriptor" in tasks.run(main)


def test_lock_is_fifo_and_exclusive() -> None:
    lock = tasks.Lock()
    inside: list[str] = []
    log: list[str] = []

    async def user(name: str) -> None:
        async with lock:
            inside.append(name)
            assert len(inside) == 1
            await tasks.run_sync(time.sleep, 0.005)
            log.append(name)
            inside.remove(name)

    async def main() -> None:
        async with tasks.open_nursery() as n:
            for name in "abcd":
                n.start_soon(user, name)

    tasks.run(main)
    assert log == list("abcd")


def test_event_wakes_every_waiter() -> None:
    ev = tasks.Event()
    woke: list[int] = []

    async def waiter(k: int) -> None:
        await ev.wait()
        woke.append(k)

    async def setter_main() -> None:
        async with tasks.open_nursery() as n:
            for k in range(3):
                n.start_soon(waiter, k)

            async def set_later() -> None:
                await tasks.run_sync(time.sleep, 0.01)
                assert woke == []
                ev.set()

            n.start_soon(set_later)

    tasks.run(setter_main)
    assert sorted(woke) == [0, 1, 2]


def test_a_task_s_error_ends_the_run() -> None:
    async def bad() -> None:
        raise ValueError("boom")

    async def main() -> None:
        async with tasks.open_nursery() as n:
            n.start_soon(bad)

    with pytest.raises(ValueError, match="boom"):
        tasks.run(main)


def test_awaiting_another_loop_s_primitive_is_an_error_not_a_hang() -> None:
    class Foreign:
        def __await__(self):
            yield "a trio trap"

    async def main() -> None:
        await Foreign()

    with pytest.raises(RuntimeError, match="another event loop"):
        tasks.run(main)


def test_wait_readable_returns_once_data_arrives() -> None:
    r, w = os.pipe()
    try:
        threading.Timer(0.05, os.write, (w, b"x")).start()

        async def main() -> bytes:
            await tasks.wait_readable(r)
            return os.read(r, 1)

        assert tasks.run(main) == b"x"
    finally:
        os.close(r)
        os.close(w)


def test_a_signal_handler_can_close_the_fd_or_spawn_a_task() -> None:
    """What pyfuse3.terminate() does from a SIGTERM handler, and what a pause does from SIGUSR1:
    the blocked poll must return."""
    r, w = os.pipe()
    spawned: list[str] = []

    async def note() -> None:
        spawned.append("ran")

    def on_usr1(*_: object) -> None:
        tasks.spawn(note)

    old1 = signal.signal(signal.SIGUSR1, on_usr1)
    old2 = signal.signal(signal.SIGUSR2, lambda *_: tasks.notify_closing(r))
    backstop = threading.Timer(10, os.write, (w, b"x"))  # without the wake-up the poll would sleep until this
    try:
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        threading.Timer(0.15, os.kill, (os.getpid(), signal.SIGUSR2)).start()
        backstop.start()

        async def main() -> None:
            await tasks.wait_readable(r)

        with pytest.raises(tasks.ClosedResourceError):
            tasks.run(main)
        assert backstop.is_alive(), "the signal did not wake the poll"
        assert spawned == ["ran"]
    finally:
        backstop.cancel()
        signal.signal(signal.SIGUSR1, old1)
        signal.signal(signal.SIGUSR2, old2)
        os.close(r)
        os.close(w)
