"""The union filesystems under test: one class each, mount/unmount with each one's whiteout form.

Each comes twice: as a read-only mount of the layers, and (name ending ``-ctr``) as the container
path: a new container each mount, writable, with a fresh upper and work dir, its lowers named as
containers/storage names them to a ``mount_program`` (``overlay/l/NAME``) where the stack has them.

Every mount made here is recorded in :data:`ACTIVE` until it is unmounted, so :func:`cleanup_all`
(called from ``finally`` blocks and signal handlers) can remove whatever is left, including the
FUSE server processes it started.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from unionfs.mount import is_mounted
from unionfs.sharedtables import ENV as TABLES_ENV

from .stack import Stack

KERNEL_MAX_LOWERS = 500  # OVL_MAX_STACK
PAGE = os.sysconf("SC_PAGE_SIZE")


class CannotMount(Exception):
    """This implementation cannot mount this stack (message says why, one line)."""


@dataclass
class Handle:
    impl: str
    mountpoint: Path
    pid: int | None  # FUSE server process, None for the kernel
    fuse: bool
    mount_seconds: float = 0.0  # from starting the mount until the root lists


ACTIVE: dict[str, Handle] = {}


def wait_answers(mp: Path, timeout: float = 60.0) -> None:
    """Wait until *mp* is a mount point whose root lists."""
    deadline = time.monotonic() + timeout
    while True:
        if is_mounted(mp):
            try:
                os.listdir(mp)
                return
            except OSError as e:
                if e.errno not in (errno.ENOTCONN, errno.ECONNABORTED):
                    raise
        if time.monotonic() > deadline:
            raise CannotMount(f"{mp} did not answer within {timeout:.0f}s")
        time.sleep(0.001)


def find_server(mp: Path, names: tuple[str, ...]) -> int | None:
    """The pid of the FUSE server serving *mp* (its command line names the mount point)."""
    target = os.fsencode(os.path.abspath(mp))
    me = os.getpid()
    for ent in os.scandir("/proc"):
        if not ent.name.isdigit() or int(ent.name) == me:
            continue
        try:
            with open(f"/proc/{ent.name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if target in argv and any(n.encode() in a for a in argv[:2] for n in names):
            return int(ent.name)
    return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[-1][:1] not in ("Z", "X")
    except OSError:
        return False


def peak_rss_kib(pid: int | None) -> int | None:
    """VmHWM of *pid* in KiB (None if unknown)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _run(cmd: list[str], cwd: Path | None = None, timeout: float = 120, env: dict | None = None) -> None:
    r = subprocess.run(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    if r.returncode != 0:
        msg = (r.stderr or r.stdout).decode(errors="replace").strip().splitlines()
        raise CannotMount(f"{cmd[0]} exited {r.returncode}: {msg[-1] if msg else ''}")


class Impl:
    name = "?"
    fuse = True
    container = False  # a new container each mount (see the module's doc)
    server_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.ctr: Path | None = None  # the containers' upper and work dirs go here: <ctr>/diff, <ctr>/work

    def workspace(self, ws: Path) -> None:
        """Where this implementation keeps what it needs beside the mounts (the run's work dir)."""
        self.ctr = ws / f"ctr-{self.name}"

    @property
    def upper(self) -> Path:
        assert self.ctr is not None, "workspace() first"
        return self.ctr / "diff"

    @property
    def work(self) -> Path:
        return self.upper.parent / "work"

    def lowers(self, stack: Stack) -> list[Path]:
        """The lowers as this path names them: a container's through containers/storage's links."""
        return (stack.links or stack.oci_layers) if self.container else stack.oci_layers

    def writable(self) -> str:
        """A container's mount options beyond its lowers (none on the read-only path)."""
        return f",upperdir={self.upper},workdir={self.work}" if self.container else ""

    def _new_container(self) -> None:
        if self.ctr is None:
            raise CannotMount(f"{self.name}: no workspace for its containers")
        shutil.rmtree(self.ctr, ignore_errors=True)
        self.upper.mkdir(parents=True)
        self.work.mkdir()

    def check(self, stack: Stack) -> str | None:
        """Why this implementation cannot mount *stack*, or None."""
        return None

    def _mount(self, stack: Stack, mp: Path, cache: Path | None) -> None:
        raise NotImplementedError

    def mount(self, stack: Stack, mp: Path, cache: Path | None = None) -> Handle:
        why = self.check(stack)
        if why:
            raise CannotMount(why)
        mp = Path(os.path.abspath(mp))
        h = Handle(self.name, mp, None, self.fuse)
        ACTIVE[str(mp)] = h  # before mounting: a half-made mount is cleaned up too
        try:
            if self.container:
                self._new_container()
            t0 = time.perf_counter()
            self._mount(stack, mp, cache)
            wait_answers(mp)
            h.mount_seconds = time.perf_counter() - t0
            if self.fuse and h.pid is None:
                h.pid = find_server(mp, self.server_names)
        except BaseException:
            unmount(h)
            raise
        return h

    def describe(self) -> dict:
        return {"name": self.name}


class KernelOverlay(Impl):
    """Kernel overlayfs, read-only (lowers only), from the kernel-form layers' parent directory."""

    name = "kernel-overlay"
    fuse = False

    def _opts(self, stack: Stack) -> str:
        names = [p.name for p in stack.kernel_layers]
        if self.container:
            return "lowerdir=" + ":".join(names) + self.writable()
        if len(names) == 1:  # the kernel wants >= 2 lowers without an upper: add an empty bottom layer
            names.append(".empty")
        return "lowerdir=" + ":".join(names)

    def check(self, stack: Stack) -> str | None:
        if not stack.kernel_layers:
            return "no kernel-form layers"
        if stack.layers > KERNEL_MAX_LOWERS:
            return f"cannot mount: {stack.layers} layers > {KERNEL_MAX_LOWERS}"
        n = len(self._opts(stack))
        if n >= PAGE:
            return f"cannot mount: option string {n} bytes > one page ({PAGE})"
        return None

    def _mount(self, stack: Stack, mp: Path, cache: Path | None) -> None:
        parent = stack.kernel_layers[0].parent
        if stack.layers == 1 and not self.container:
            (parent / ".empty").mkdir(exist_ok=True)
        _run(["mount", "-t", "overlay", "overlay", "-o", self._opts(stack), str(mp)], cwd=parent)


def strata_overlay_cmd() -> list[str] | None:
    """How to run strata-overlay (the fuse-overlayfs compatible entry point), or None if unusable."""
    exe = Path(sys.executable).parent / "strata-overlay"
    if exe.is_file() and os.access(exe, os.X_OK):
        return [str(exe)]
    found = shutil.which("strata-overlay")
    return [found] if found else None


class Strata(Impl):
    """strata's pyfuse3 overlay with the precompiled index (``strata-overlay``)."""

    name = "strata"
    server_names = ("strata-overlay", "python")
    use_index = True

    def __init__(self, via: str = "auto") -> None:
        super().__init__()
        cmd = strata_overlay_cmd() if via in ("auto", "cli") else None
        self.cmd = cmd
        self.via = "strata-overlay" if cmd else "python-api"

    def describe(self) -> dict:
        return {"name": self.name, "via": self.via, "use_index": self.use_index}

    def strata_lowerdir(self, stack: Stack) -> str:
        """``lowerdir=`` as strata-overlay parses it (a ':' in a path escaped)."""
        return "lowerdir=" + ":".join(str(p).replace(":", "\\:") for p in self.lowers(stack))

    def _mount(self, stack: Stack, mp: Path, cache: Path | None) -> None:
        if self.cmd:
            opts = self.strata_lowerdir(stack)
            if self.use_index and cache is not None:
                opts += f",strata_index={cache}"
            if not self.use_index:
                opts += ",strata_noindex"
            _run(self.cmd + ["-o", opts, str(mp)])
        else:
            from unionfs.mount import MountError, MountSpec, mount

            try:
                pid = mount(MountSpec(lowers=list(stack.oci_layers), index_cache=cache, use_index=self.use_index), mp)
            except MountError as e:
                raise CannotMount(str(e)) from None
            ACTIVE[str(mp)].pid = pid


class StrataNoIndex(Strata):
    """strata without the index: probes the layers on every lookup (``strata_noindex``)."""

    name = "strata-noindex"
    use_index = False


class StrataContainer(Strata):
    """A new container through ``strata-overlay``: no index cache of its own (a new work dir), the
    layers' tables shared by every container (kept in the run's workspace, not the user's cache)."""

    name = "strata-ctr"
    container = True
    tables: Path | None = None

    def workspace(self, ws: Path) -> None:
        super().workspace(ws)
        self.tables = ws / "shared-tables"

    def _mount(self, stack: Stack, mp: Path, cache: Path | None) -> None:
        if not self.cmd:
            raise CannotMount("strata-overlay is not installed")
        opts = self.strata_lowerdir(stack) + self.writable()
        _run(self.cmd + ["-o", opts, str(mp)], env={**os.environ, TABLES_ENV: str(self.tables)})


class KernelOverlayContainer(KernelOverlay):
    name = "kernel-overlay-ctr"
    container = True


class FuseOverlayfs(Impl):
    name = "fuse-overlayfs"
    server_names = ("fuse-overlayfs",)

    def check(self, stack: Stack) -> str | None:
        if shutil.which("fuse-overlayfs") is None:
            return "fuse-overlayfs is not installed"
        return None

    def describe(self) -> dict:
        try:
            v = subprocess.run(["fuse-overlayfs", "--version"], capture_output=True, text=True, timeout=10)
            lines = (v.stdout + v.stderr).splitlines()
            version = next((x.strip() for x in lines if x.startswith("fuse-overlayfs")), lines[0].strip())
        except (OSError, subprocess.TimeoutExpired, IndexError):
            version = "?"
        return {"name": self.name, "version": version}

    def _mount(self, stack: Stack, mp: Path, cache: Path | None) -> None:
        opts = "lowerdir=" + ":".join(str(p) for p in self.lowers(stack)) + self.writable()
        _run(["fuse-overlayfs", "-o", opts, str(mp)])


class FuseOverlayfsContainer(FuseOverlayfs):
    name = "fuse-overlayfs-ctr"
    container = True


IMPLS: dict[str, type[Impl]] = {
    "strata": Strata,
    "strata-noindex": StrataNoIndex,
    "kernel-overlay": KernelOverlay,
    "fuse-overlayfs": FuseOverlayfs,
    "strata-ctr": StrataContainer,
    "kernel-overlay-ctr": KernelOverlayContainer,
    "fuse-overlayfs-ctr": FuseOverlayfsContainer,
}


def make(names: list[str]) -> list[Impl]:
    out = []
    for n in names:
        if n not in IMPLS:
            raise ValueError(f"unknown implementation '{n}' (known: {', '.join(IMPLS)})")
        out.append(IMPLS[n]())
    return out


def unmount(h: Handle, timeout: float = 20.0) -> None:
    """Unmount *h* and make sure its server process is gone; never raises for an absent mount."""
    mp = str(h.mountpoint)
    # no try/finally: an interrupted unmount stays in ACTIVE, for cleanup_all to finish
    if h.fuse and h.pid is None:
        h.pid = find_server(h.mountpoint, IMPLS[h.impl].server_names if h.impl in IMPLS else ())
    if is_mounted(h.mountpoint):
        cmds = [["fusermount3", "-u", mp]] if h.fuse else []
        cmds += [["umount", mp], ["umount", "-l", mp]]
        for cmd in cmds:
            try:
                subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if not is_mounted(h.mountpoint):
                break
    if h.pid is not None:
        deadline = time.monotonic() + timeout
        sig_sent = None
        while _alive(h.pid):
            now = time.monotonic()
            if now > deadline and sig_sent != signal.SIGKILL:
                sig_sent = signal.SIGKILL
                _kill(h.pid, signal.SIGKILL)
            elif now > deadline - timeout / 2 and sig_sent is None:
                sig_sent = signal.SIGTERM
                _kill(h.pid, signal.SIGTERM)
            elif now > deadline + 5:
                break
            time.sleep(0.005)
    ACTIVE.pop(mp, None)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def cleanup_all() -> list[str]:
    """Unmount everything still in :data:`ACTIVE` (last mounted first); returns what was cleaned."""
    done = []
    for key in reversed(list(ACTIVE)):
        h = ACTIVE.get(key)
        if h is None:
            continue
        try:
            unmount(h, timeout=10.0)
        except Exception:  # noqa: BLE001
            pass
        done.append(key)
    return done
