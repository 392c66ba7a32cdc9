"""The task loop a mount server runs pyfuse3 on, in place of trio.

All requests are served in one thread.  A request that has to wait (a copy-up's data, an fsync,
a write held by a pause) waits as a task, and the others go on meanwhile.  pyfuse3 needs only a
handful of trio's calls (the ones ``pyfuse3.asyncio`` supplies too): ``open_nursery``,
``Lock``, ``lowlevel.wait_readable``, ``notify_closing``, ``current_task`` and
``current_trio_token``; strata's handlers await ``Lock``, ``Event`` and ``to_thread.run_sync``.
Trio's import costs ~70 ms of every mount's start and its task switches ~1/3 of the request rate;
this loop costs neither.  Signals reach their Python handlers through a wake-up pipe; a handler
may :func:`spawn` a task or set an :class:`Event`.  A task that raises ends :func:`run` with its
exception (as an error escaping a trio nursery ends ``trio.run``).
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any


class ClosedResourceError(Exception):
    """The descriptor a task waits on is being closed (pyfuse3.terminate())."""


class Task:
    __slots__ = ("coro", "name", "nursery")

    def __init__(self, coro: Coroutine, name: str, nursery: _Nursery | None) -> None:
        self.coro, self.name, self.nursery = coro, name, nursery


class _Park:
    """Awaiting it suspends the task until something puts it back in the ready queue."""

    __slots__ = ()

    def __await__(self) -> Generator[None, Any, Any]:
        return (yield None)


_PARK = _Park()
_ready: deque[tuple[Task, Any, BaseException | None]] = deque()
_readers: dict[int, Task] = {}
_closing: set[int] = set()
_current: Task | None = None
_finished: list[tuple[Task, Any, BaseException | None]] = []  # by worker threads, under _lock
_lock = threading.Lock()
_wake = -1  # write end of the wake-up pipe while run() runs


def _resume(task: Task, value: Any = None, error: BaseException | None = None) -> None:
    _ready.append((task, value, error))


def current_task() -> Task | None:
    return _current


def current_trio_token() -> None:
    return None


def spawn(fn: Callable[..., Awaitable[Any]], *args: Any, name: str = "task") -> None:
    """Start ``fn(*args)`` as a task of its own (from a task or a signal handler)."""
    _resume(Task(fn(*args), name, None))  # type: ignore[arg-type]


async def wait_readable(fd: int) -> None:
    if fd not in _closing:
        _readers[fd] = _current  # type: ignore[assignment]
        await _PARK
    if fd in _closing:
        raise ClosedResourceError


def notify_closing(fd: int) -> None:
    _closing.add(fd)
    task = _readers.pop(fd, None)
    if task is not None:
        _resume(task)


class Event:
    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[Task] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        for t in self._waiters:
            _resume(t)
        self._waiters.clear()

    async def wait(self) -> None:
        if not self._set:
            self._waiters.append(_current)  # type: ignore[arg-type]
            await _PARK


class Lock:
    """A FIFO lock: a release hands it to the first waiter."""

    __slots__ = ("_held", "_waiters")

    def __init__(self) -> None:
        self._held = False
        self._waiters: deque[Task] = deque()

    def locked(self) -> bool:
        return self._held

    async def __aenter__(self) -> None:
        if self._held:
            self._waiters.append(_current)  # type: ignore[arg-type]
            await _PARK  # (woken holding it)
        self._held = True

    async def __aexit__(self, *exc: object) -> None:
        if self._waiters:
            _resume(self._waiters.popleft())
        else:
            self._held = False


async def run_sync(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a thread of its own, while the other tasks go on."""
    task = _current

    def work() -> None:
        try:
            done = (task, fn(*args), None)
        except BaseException as e:  # noqa: BLE001 - handed to the task
            done = (task, None, e)
        with _lock:
            _finished.append(done)  # type: ignore[arg-type]
            if _wake >= 0:
                os.write(_wake, b"t")

    threading.Thread(target=work, name="strata-io", daemon=True).start()
    return await _PARK


class _Nursery:
    """Waits, at the end of its ``async with`` block, for the tasks started in it."""

    def __init__(self) -> None:
        self.children = 0
        self.waiter: Task | None = None

    async def __aenter__(self) -> _Nursery:
        return self

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str | None = None) -> None:
        self.children += 1
        _resume(Task(fn(*args), name or "task", self))  # type: ignore[arg-type]

    async def __aexit__(self, *exc: object) -> None:
        while self.children:
            self.waiter = _current
            await _PARK
        self.waiter = None


def open_nursery() -> _Nursery:
    return _Nursery()


lowlevel = from_thread = to_thread = sys.modules[__name__]


def run(main: Callable[[], Coroutine]) -> Any:
    """Run ``main()`` and the tasks it starts until it returns; returns what it returns."""
    global _current, _wake
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    with _lock:
        _wake = w
    _closing.clear()
    root = Task(main(), "main", None)
    _resume(root)
    poller = select.poll()
    poller.register(r, select.POLLIN)
    polled: set[int] = set()
    try:
        while True:
            while _ready:
                task, value, error = _ready.popleft()
                _current = task
                try:
                    if (task.coro.send(value) if error is None else task.coro.throw(error)) is not None:
                        raise RuntimeError(f"task {task.name} awaited what only another event loop serves")
                except StopIteration as done:
                    if task is root:
                        return done.value
                    n = task.nursery
                    if n is not None:
                        n.children -= 1
                        if not n.children and n.waiter is not None:
                            _resume(n.waiter)
                finally:
                    _current = None
            for fd in polled - _readers.keys():
                poller.unregister(fd)
            for fd in _readers.keys() - polled:
                poller.register(fd, select.POLLIN)
            polled = set(_readers)
            for fd, _ in poller.poll():
                if fd == r:
                    _drain(r)
                elif fd in _readers:
                    _resume(_readers.pop(fd))
    finally:
        signal.set_wakeup_fd(old)
        with _lock:
            _wake = -1
        os.close(r)
        os.close(w)
        _ready.clear()
        _readers.clear()


def _drain(r: int) -> None:
    """Empty the wake-up pipe (signals and finished threads write to it) and resume the tasks
    whose thread is done."""
    while True:
        try:
            if not os.read(r, 512):
                break
        except BlockingIOError:
            break
    with _lock:
        done, _finished[:] = list(_finished), []
    for task, value, error in done:
        _resume(task, value, error)


def install(pyfuse3_module: Any) -> None:
    """Make pyfuse3 use this module in place of trio (before pyfuse3.main() first runs)."""
    pyfuse3_module.trio = sys.modules[__name__]
