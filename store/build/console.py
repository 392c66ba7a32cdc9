"""A container's terminal, as `docker run -t` gives one: a pseudo-terminal whose other end is
relayed to ours (our window size copied in, our terminal raw while it is forwarded)."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import select
import socket
import struct
import subprocess
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass

PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class Stdio:
    """What the command's descriptors are: *stdin* ours (``-i``) or /dev/null, with *tty* a new
    pseudo-terminal for all three (``-t``), and a *script* open at SCRIPT_FD for its interpreter."""

    stdin: bool = False
    tty: bool = False
    script: str | None = None


NO_STDIN = Stdio()  # (as Docker runs a build's RUN, and `run` without -i)
SCRIPT_FD = 3


@contextlib.contextmanager
def script_fd(script: str | None) -> Iterator[tuple[tuple[int, ...], Callable[[], None]]]:
    """Popen's *pass_fds* and a step for its *preexec_fn* that leave *script* (if any) open at
    SCRIPT_FD in the child, in an anonymous memory file that is gone with its last descriptor."""
    if script is None:
        yield (), lambda: None
        return
    fd = os.memfd_create("script")
    try:
        with open(fd, "wb", closefd=False) as f:
            f.write(script.encode())
        if fd == SCRIPT_FD:
            yield (fd,), lambda: None
        else:  # (SCRIPT_FD is open here, or the memory file would have got it: the child's copy is replaced)
            yield (SCRIPT_FD, fd), lambda: os.dup2(fd, SCRIPT_FD)
    finally:
        os.close(fd)


def window_size() -> tuple[int, int] | None:
    """(rows, columns) of our terminal, or None where no stream of ours is one."""
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            rows, cols, _x, _y = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
            if rows or cols:
                return rows, cols
    return None


def open_pty() -> tuple[int, int]:
    """(master, slave) of a new pseudo-terminal, as big as ours."""
    master, slave = os.openpty()
    size = window_size()
    if size:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
    return master, slave


def take_controlling_terminal() -> None:
    """In the child, after setsid: its stdin (the slave) becomes its controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def receive_master(listener: socket.socket, starter: subprocess.Popen, timeout: float = 60) -> int:
    """The pty master the OCI runtime sends to its console socket (before *starter* gives up)."""
    listener.settimeout(0.2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and starter.poll() is None:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        with conn:
            _msg, fds, _flags, _addr = socket.recv_fds(conn, 1024, 1)
        if fds:
            return fds[0]
    starter.wait(timeout=60)
    raise OSError(f"runc sent no terminal (exit code {starter.returncode})")


def become_subreaper() -> None:
    """Orphans of our children become ours (as a detached container's process, once runc exits)."""
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


class Child:
    """A process that became our child by reparenting, waited for as subprocess.Popen waits."""

    def __init__(self, pid: int) -> None:
        self.pid, self.returncode = pid, None

    def poll(self) -> int | None:
        return self._wait(os.WNOHANG)

    def wait(self) -> int:
        return self._wait(0)  # type: ignore[return-value]

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def _wait(self, flags: int) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, flags)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def relay(master: int, proc: subprocess.Popen | Child, forward_stdin: bool) -> None:
    """Copy the terminal's output to our stdout (and our stdin to it) until *proc* has exited and
    the terminal has nothing more to say."""
    out = sys.stdout.buffer
    readers = [master] + ([0] if forward_stdin else [])
    with _raw(0 if forward_stdin else None):
        while True:
            exited = proc.poll() is not None
            ready, _, _ = select.select(readers, [], [], 0.05 if exited else 0.2)
            if not ready and exited:
                return
            if 0 in ready:
                data = os.read(0, 65536)
                if data:
                    os.write(master, data)
                else:
                    readers.remove(0)  # (our stdin ended: the command sees no more, as docker's)
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # (EIO: every process of the container closed the terminal)
                    data = b""
                if not data:
                    return
                out.write(data)
                out.flush()


@contextlib.contextmanager
def _raw(fd: int | None) -> Iterator[None]:
    """Our terminal raw (keys go to the container's, ^C included) while forwarded, then restored."""
    if fd is None or not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
