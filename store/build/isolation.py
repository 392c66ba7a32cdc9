"""Run a command in a mounted rootfs as buildah's chroot isolation does: private mount, UTS and IPC
namespaces, /proc, /sys and /dev mounted inside (gone with the namespace), then chroot."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import InvalidInput
from . import console
from .console import NO_STDIN, Stdio

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 4096, 0x4000, 1 << 18


def user_ids(rootfs: Path, user: str) -> tuple[int, int, list[int]]:
    """uid, gid and supplementary groups of USER[:GROUP] (names from the rootfs's /etc files)."""
    name, _, group = (user or "root").partition(":")
    passwd = _table(rootfs / "etc/passwd")
    groups = _table(rootfs / "etc/group")
    if name.isdigit():
        uid = int(name)
        gid = next((int(r[3]) for r in passwd.values() if r[2] == name), 0)
    elif name in passwd:
        uid, gid = int(passwd[name][2]), int(passwd[name][3])
    elif name == "root":  # (an image without /etc/passwd: root is 0 all the same)
        uid, gid = 0, 0
    else:
        raise InvalidInput(f"unable to find user {name}: no matching entries in passwd file")
    if group:
        if group.isdigit():
            gid = int(group)
        elif group in groups:
            gid = int(groups[group][2])
        else:
            raise InvalidInput(f"unable to find group {group}: no matching entries in group file")
    pw_name = name if not name.isdigit() else next((k for k, r in passwd.items() if r[2] == name), "")
    extra = sorted({int(r[2]) for r in groups.values() if pw_name and pw_name in r[3].split(",")} | {gid})
    return uid, gid, extra


def _check_executable(rootfs: Path, name: str, path: str) -> None:
    """ExecFailed (127, 126) unless *name* is an executable file in *rootfs* (found on *path*)."""
    candidates = [name] if "/" in name else [f"{d}/{name}" for d in path.split(":") if d]
    for c in candidates:
        p = resolve_in(rootfs, c)
        if p is not None and p.is_file():
            if not os.access(p, os.X_OK):
                raise ExecFailed(126, f'exec: "{name}": permission denied')
            return
    raise ExecFailed(127, f'exec: "{name}": executable file not found in $PATH')


def resolve_in(root: Path, rel: str, hops: int = 40) -> Path | None:
    """*rel* below *root* with its symlinks followed as if *root* were ``/``; None if dangling."""
    done: list[str] = []
    todo = [c for c in rel.split("/") if c not in ("", ".")]
    while todo:
        c = todo.pop(0)
        if c == "..":
            if done:
                done.pop()
            continue
        p = root.joinpath(*done, c)
        if p.is_symlink():
            hops -= 1
            if hops < 0:
                return None
            target = os.readlink(p)
            if target.startswith("/"):
                done = []
            todo = [x for x in target.split("/") if x not in ("", ".")] + todo
            continue
        if not os.path.lexists(p):
            return None
        done.append(c)
    return root.joinpath(*done)


def _table(path: Path) -> dict[str, list[str]]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    return {f[0]: f for f in (line.split(":") for line in lines) if len(f) >= 4 and f[0]}


MS_REMOUNT = 32


class ExecFailed(InvalidInput):
    """The command could not be executed: *code* is what a shell would exit with (127, 126)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def run(
    rootfs: Path,
    argv: list[str],
    env: Mapping[str, str],
    workdir: str,
    user: str,
    binds: Sequence[tuple[str, str, bool]] = (),
    runtime_tmp: Path | None = None,
    stdio: Stdio = NO_STDIN,
) -> int:
    """Run *argv* in *rootfs* with our stdout and stderr (and stdin, or a terminal, as *stdio* says);
    SIGINT and SIGTERM are passed on.
    *binds*: (host path, path inside, read-only) mounted in its namespace.  With *runtime_tmp*
    (where its bundle goes), through the OCI runtime (runc); else chroot isolation.  Returns its exit
    status (as a shell reports a signal: 128 + N); ExecFailed if it cannot be started."""
    uid, gid, groups = user_ids(rootfs, user)
    env = dict(env)
    if "HOME" not in env:  # (as container runtimes set it: the user's home in the image's passwd)
        homes = [r[5] for r in _table(rootfs / "etc/passwd").values() if len(r) > 5 and r[2] == str(uid)]
        env["HOME"] = homes[0] if homes else "/"
    _check_executable(rootfs, argv[0], env.get("PATH", ""))
    if runtime_tmp is not None:
        from . import runtime

        spec = runtime.config(rootfs, argv, env, workdir, (uid, gid, groups), binds, stdio.tty)
        return runtime.run(spec, runtime_tmp, stdio)
    libc = ctypes.CDLL(None, use_errno=True)
    root = os.fsencode(rootfs)

    def mount(src: bytes, target: str, fstype: bytes | None, flags: int) -> None:
        dst = root + target.encode()  # (only where the image has the directory: no stubs are made)
        if os.path.isdir(dst) and libc.mount(src, dst, fstype, flags, None) != 0:
            raise OSError(ctypes.get_errno(), f"mount {target}")

    def inside() -> None:  # (in the child, before exec)
        if libc.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC) != 0:
            raise OSError(ctypes.get_errno(), "unshare")
        if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
        mount(b"proc", "/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        mount(b"sysfs", "/sys", b"sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
        mount(b"/dev", "/dev", None, MS_BIND | MS_REC)
        for f in ("/etc/resolv.conf", "/etc/hosts"):  # the host's network, where the image has the files
            if os.path.isfile(f) and os.path.isfile(root + f.encode()) and not os.path.islink(root + f.encode()):
                if libc.mount(f.encode(), root + f.encode(), None, MS_BIND, None) != 0:
                    raise OSError(ctypes.get_errno(), f"mount {f}")
        for host, target, ro in binds:
            dst = root + target.encode()
            if libc.mount(host.encode(), dst, None, MS_BIND | MS_REC, None) != 0:
                raise OSError(ctypes.get_errno(), f"mount {host} on {target}")
            if ro and libc.mount(b"none", dst, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC, None) != 0:
                raise OSError(ctypes.get_errno(), f"remount {target} read-only")
        if stdio.tty:
            console.take_controlling_terminal()
        place_script()
        os.chroot(root)
        os.chdir(workdir or "/")
        os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)

    master, slave = console.open_pty() if stdio.tty else (None, None)
    streams = {"stdin": None if stdio.stdin else subprocess.DEVNULL}
    if slave is not None:
        streams = {"stdin": slave, "stdout": slave, "stderr": slave}
    try:
        with console.script_fd(stdio.script) as (pass_fds, place_script):
            proc = subprocess.Popen(  # noqa: PLW1509
                argv, env=env, preexec_fn=inside, start_new_session=stdio.tty, pass_fds=pass_fds, **streams
            )
    except FileNotFoundError:
        raise ExecFailed(127, f'exec: "{argv[0]}": executable file not found in $PATH') from None
    except PermissionError:
        raise ExecFailed(126, f'exec: "{argv[0]}": permission denied') from None
    except subprocess.SubprocessError:  # (the set-up in the child failed: a namespace, a mount, the user)
        raise InvalidInput(f"cannot start {argv[0]} in the container (its namespaces, mounts or user)") from None
    finally:
        if slave is not None:
            os.close(slave)
    try:
        return wait_passing_signals(proc, master, stdio.stdin)
    finally:
        if master is not None:
            os.close(master)


def wait_passing_signals(
    proc: subprocess.Popen | console.Child, terminal: int | None = None, forward_stdin: bool = False
) -> int:
    """Wait for *proc*, passing SIGINT and SIGTERM on to it (and relaying its *terminal*, if it
    has one); its status as a shell gives it."""
    passed = {s: signal.signal(s, lambda n, _f: proc.send_signal(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if terminal is not None:
            console.relay(terminal, proc, forward_stdin)
        code = proc.wait()
    finally:
        for s, old in passed.items():
            signal.signal(s, old)
    return 128 - code if code < 0 else code
