"""Public API: mount a union filesystem, unmount it, query its state, list container changes."""

from __future__ import annotations

import errno
import logging
import os
import signal
import stat
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from . import longpath, sharedtables
from .index import load_or_build
from .realpath import realpaths
from .upper import Upper

__all__ = ["MountSpec", "MountError", "mount", "unmount", "mount_state"]

READY_TIMEOUT = 30.0


class MountError(Exception):
    """A mount could not be established (message is one line)."""


class MountSpec(NamedTuple):  # (not a dataclass: importing dataclasses costs every mount ~9 ms)
    lowers: Sequence[str | bytes | os.PathLike]  # topmost first
    upper: Path | None = None  # None => read-only
    work: Path | None = None
    index_cache: Path | None = None
    use_index: bool = True
    allow_other: bool = False
    dev: bool = False  # device nodes and set-id bits work only when asked for (root only)
    suid: bool = False
    debug: bool = False
    fsname: str = "strata-overlay"
    volatile: bool = False  # copy-ups skip their fsync (containers/storage asks it of throwaway layers)
    # the lowers' lstat results if they are already resolved (``index.realpaths``) and checked: the
    # caller did it to report a bad one, and doing it again costs ~4 ms for 1000 layers
    lower_stats: Sequence[os.stat_result | None] | None = None
    named: Sequence[str | bytes | os.PathLike] | None = None  # resolved lowers as the caller named them
    # the kernel serves a writable mount's file data from the real files (FUSE passthrough) where
    # it can; STRATA_PASSTHROUGH=0 in the environment turns it off as False does
    passthrough: bool = True


def _check_dir(p: Path, what: str) -> Path:
    try:
        rp = Path(os.path.realpath(p))
        if not rp.is_dir():
            raise MountError(f"{what} {p} {'is not a directory' if os.path.lexists(rp) else 'does not exist'}")
    except OSError as e:
        raise MountError(f"{what} {p}: {e.strerror}") from None
    return rp


def _prepare(spec: MountSpec, mountpoint: Path):
    """Validate the spec and build the operations object (before any fork, so errors surface)."""
    import pyfuse3  # noqa: F401  (fail early if missing)

    from .operations import UnionOperations

    if not spec.lowers:
        raise MountError("no lower directory given")
    stats: list[os.stat_result | None] = []
    if spec.lower_stats is not None:
        real, stats = list(map(os.fsencode, spec.lowers)), list(spec.lower_stats)
    else:
        try:
            real = realpaths(spec.lowers, stats)  # (one realpath per lower costs ~60 ms for 1000 layers)
        except OSError as e:
            raise MountError(f"lower directory: {e.strerror}") from None
    for p, st in zip(spec.lowers, stats, strict=True):
        if st is None or not stat.S_ISDIR(st.st_mode):  # (resolved: lstat is stat)
            raise MountError(f"lower directory {p} is not a directory")
    lowers = real
    state = mount_state(Path(os.path.abspath(mountpoint)))
    if state == "dead":
        raise MountError(f"{mountpoint} is a dead mount (its server is gone); unmount it first")
    if state != "unmounted":
        raise MountError(f"{mountpoint} is already a mount point")
    mp = _check_dir(mountpoint, "mountpoint")
    upper = None
    if spec.upper is not None:
        up = _check_dir(spec.upper, "upper directory")
        work = None
        if spec.work is not None:
            try:
                Path(spec.work).mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise MountError(f"work directory {spec.work}: {e.strerror}") from None
            work = _check_dir(spec.work, "work directory")
            if os.stat(work).st_dev != os.stat(up).st_dev:
                # as kernel overlayfs: copy-up renames from the work dir into the upper
                raise MountError(f"work directory {spec.work} is not on the same filesystem as upper directory {up}")
        if os.statvfs(up).f_flag & os.ST_RDONLY:
            raise MountError(f"upper directory {up} is on a read-only filesystem")
        claim = _claim_upper(up, mp)
        try:
            upper = Upper(up, work, durable=not spec.volatile)
        except OSError as e:
            os.close(claim)
            raise MountError(f"upper directory {up}: {e.strerror}") from None
        upper.claim_fd = claim
    try:
        if spec.use_index:
            cache_dir = tables = None
            if spec.index_cache is None:  # (a caller naming its cache keeps the tables beside it)
                tables = sharedtables.shared_dir()
                if spec.work is not None:
                    cache_dir = Path(os.path.realpath(spec.work)) / "strata"
            if tables is not None and upper is not None:
                sharedtables.forget(tables, upper.root)
            lower = load_or_build(
                lowers,
                spec.index_cache,
                cache_dir,
                resolved=stats,
                tables=tables,
                immutable=sharedtables.immutable(spec.named or spec.lowers, lowers),
            )
        else:
            from .probe import ProbeLower

            lower = ProbeLower(lowers)
    except OSError as e:
        raise MountError(f"cannot read lower layers: {e}") from None
    passthrough = spec.passthrough and os.environ.get("STRATA_PASSTHROUGH", "1") != "0"
    return UnionOperations(lower, upper, passthrough=passthrough), mp


SERVER_XATTRS = (b"trusted.strata.server", b"user.strata.server")  # the mount point serving an upper
CLAIM_WAIT = 3.0  # seconds a server that is exiting gets to let go of its upper


def _claim_upper(up: Path, mp: Path) -> int:
    """Lock *up* for this mount's server (one writable server per upper: two would drift apart).

    The lock is an flock on a descriptor of the upper directory, held until the server exits;
    the mount point is recorded beside it, so that a second mount can say which mount has it.
    """
    import fcntl

    fd = os.open(up, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    deadline = time.monotonic() + CLAIM_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            holder = _server_of(fd)
            if (holder and is_mounted(Path(holder))) or time.monotonic() > deadline:
                os.close(fd)
                where = f"the mount at {holder}" if holder else "another mount"
                raise MountError(f"upper directory {up} is already served by {where}") from None
            time.sleep(0.05)  # its mount is gone: the server is exiting
    for name in SERVER_XATTRS:  # (trusted.* needs root; either is hidden from the merged view)
        try:
            os.setxattr(fd, name, os.fsencode(mp))
            break
        except OSError:
            continue
    return fd


def _server_of(fd: int) -> str | None:
    for name in SERVER_XATTRS:
        try:
            return os.fsdecode(os.getxattr(fd, name))
        except OSError:
            continue
    return None


def _options(spec: MountSpec) -> set[str]:
    opts = {"default_permissions", f"fsname={spec.fsname}", "subtype=strata-overlay", "noatime"}
    if spec.allow_other:
        opts.add("allow_other")
    if spec.upper is None:
        opts.add("ro")
    root = os.geteuid() == 0
    opts.add("dev" if spec.dev and root else "nodev")
    opts.add("suid" if spec.suid and root else "nosuid")
    if spec.debug:
        opts.add("debug")
    return opts


def _serve(ops, mp: Path, opts: set[str], ready_fd: int | None, work: Path | None = None) -> None:
    """Mount and run the FUSE loop until unmounted or SIGINT/SIGTERM (writable mounts: pausable)."""
    import pyfuse3

    logfile = os.environ.get("STRATA_OVERLAY_LOG")
    if logfile and ready_fd is not None:
        logging.basicConfig(
            filename=logfile,
            level=logging.DEBUG if "debug" in opts else logging.WARNING,
            format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
        )
    try:
        pyfuse3.init(ops, str(mp), opts)
    except Exception as e:  # noqa: BLE001
        if ready_fd is not None:
            os.write(ready_fd, f"E fuse mount of {mp} failed: {e}\n".encode())
            os.close(ready_fd)
            os._exit(1)
        raise MountError(f"fuse mount of {mp} failed: {e}") from None
    if ready_fd is not None:
        os.write(ready_fd, b"OK %d\n" % os.getpid())
        os.close(ready_fd)
    stopped = {"signal": False}
    try:
        _run(pyfuse3, ops, opts, work, stopped)
    finally:
        pyfuse3.close(unmount=stopped["signal"])


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _run(pyfuse3, ops, opts: set[str], work: Path | None, stopped: dict) -> None:
    """Serve requests as tasks of :mod:`unionfs.tasks` until unmounted or stopped by a signal."""
    from . import tasks

    def stop(signum: int, frame: object) -> None:
        stopped["signal"] = True
        pyfuse3.terminate()

    for s in STOP_SIGNALS:
        signal.signal(s, stop)
    writable = ops.up is not None and "ro" not in opts
    if writable and work is not None:
        from . import pause

        pause.serve_signals(pause.install(ops), work / pause.FLAG_NAME)
    tasks.install(pyfuse3)
    # without an upper nothing waits (no copy-up, fsync or paused write): one worker serves all
    tasks.run(lambda: pyfuse3.main(min_tasks=1, max_tasks=32 if writable else 1))


def mount(spec: MountSpec, mountpoint: Path, foreground: bool = False) -> int | None:
    """Mount; without *foreground* daemonize and return the server pid once the mount answers.

    Errors before the mount is live raise :class:`MountError` (one-line message).  In foreground,
    serve until unmounted/SIGINT/SIGTERM and return None.
    """
    ops, mp = _prepare(spec, Path(mountpoint))
    opts = _options(spec)
    work = Path(os.path.realpath(spec.work)) if spec.work is not None else None
    if foreground:
        if spec.debug:
            logging.basicConfig(level=logging.DEBUG)
        os.umask(0)
        _serve(ops, mp, opts, None, work)
        return None
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # first child
        try:
            os.close(rfd)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            os.chdir("/")
            os.umask(0)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            if null > 2:
                os.close(null)
            # inherited descriptors (e.g. a caller's pipes) must not stay open; the upper's claim must
            keep = sorted({wfd, getattr(ops.up, "claim_fd", wfd)})
            for lo, hi in zip([3] + [k + 1 for k in keep], [*keep, 65536], strict=True):
                os.closerange(lo, hi)
            longpath.reset()  # (its cached descriptors were among those)
            _serve(ops, mp, opts, wfd, work)
        except BaseException:  # noqa: BLE001
            os._exit(1)
        os._exit(0)
    os.close(wfd)
    if ops.up is not None and ops.up.claim_fd is not None:
        os.close(ops.up.claim_fd)  # the server holds the upper's claim now, for as long as it runs
    os.waitpid(pid, 0)
    with os.fdopen(rfd, "rb") as r:
        msg = r.readline().decode(errors="replace").strip()
    if not msg.startswith("OK "):
        raise MountError(msg[2:] if msg.startswith("E ") else f"mount server for {mp} died during startup")
    server = int(msg.split()[1])
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if is_mounted(mp):
            try:
                os.stat(mp)
                os.statvfs(mp)
                return server
            except OSError as e:
                if e.errno != errno.ENOTCONN:
                    raise MountError(f"{mp}: {e.strerror}") from None
        if not _alive(server):
            raise MountError(f"mount server for {mp} exited during startup")
        if time.monotonic() > deadline:
            raise MountError(f"timed out waiting for {mp} to answer")
        time.sleep(0.01)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


def _unescape(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and s[i + 1 : i + 4].isdigit():
            out.append(chr(int(s[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def _mountinfo() -> list[tuple[str, str]]:
    """(mount point, fs type) of every mount in this namespace."""
    res = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            res.append((_unescape(parts[4]), parts[sep + 1]))
    return res


def is_mounted(mp: Path) -> bool:
    """Whether `mp` is a mount point in this mount namespace (whatever its server's state)."""
    target = os.path.abspath(mp)
    return any(m == target for m, _t in _mountinfo())


def mount_state(mountpoint: Path) -> str:
    """'mounted', 'dead' (the server is gone: ENOTCONN) or 'unmounted'."""
    mp = os.path.abspath(mountpoint)
    if not is_mounted(Path(mp)):
        return "unmounted"
    try:
        os.statvfs(mp)  # always reaches the server (stat may be answered from the attr cache)
    except OSError as e:
        if e.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            return "dead"
        # (a server answering with errors, EIO: still mounted, and unmountable)
    return "mounted"


def unmount(mountpoint: Path) -> None:
    """Unmount (fusermount3 -u, falling back to a lazy umount); also cleans up a dead server's mount."""
    import ctypes
    import subprocess

    mp = os.path.abspath(mountpoint)
    if not is_mounted(Path(mp)):
        return
    for cmd in (["fusermount3", "-u", mp], ["fusermount", "-u", mp]):
        try:
            r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.returncode == 0 and not is_mounted(Path(mp)):
            return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(mp), 2) != 0:  # MNT_DETACH
        e = ctypes.get_errno()
        if is_mounted(Path(mp)):
            raise MountError(f"cannot unmount {mp}: {os.strerror(e)}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(0)
