"""Run a command in a mounted rootfs through an OCI runtime (runc), as Docker does: a generated
config.json with the process's user, environment and directory, new mount, PID, IPC and UTS
namespaces, the host's network, Docker's default capabilities and masked paths."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import console
from .console import NO_STDIN, Stdio
from .isolation import wait_passing_signals

CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]  # fmt: skip
MASKED = [
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
]  # fmt: skip
READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def available() -> bool:
    return shutil.which("runc") is not None


def config(
    rootfs: Path,
    argv: list[str],
    env: Mapping[str, str],
    workdir: str,
    ids: tuple[int, int, list[int]],
    binds: Sequence[tuple[str, str, bool]],
    terminal: bool = False,
) -> dict:
    """The OCI runtime spec of the process (mounts only where the image has their mount points)."""
    uid, gid, groups = ids
    table = [
        ("/proc", "proc", "proc", "nosuid,noexec,nodev"),
        ("/dev", "tmpfs", "tmpfs", "nosuid,strictatime,mode=755,size=65536k"),
        ("/dev/pts", "devpts", "devpts", "nosuid,noexec,newinstance,ptmxmode=0666,mode=0620"),
        ("/dev/shm", "tmpfs", "shm", "nosuid,noexec,nodev,mode=1777,size=65536k"),
        ("/dev/mqueue", "mqueue", "mqueue", "nosuid,noexec,nodev"),
        ("/sys", "sysfs", "sysfs", "nosuid,noexec,nodev,ro"),
    ]
    mounts = [{"destination": d, "type": t, "source": s, "options": o.split(",")} for d, t, s, o in table]
    mounts = [m for m in mounts if m["destination"].startswith("/dev/") or (rootfs / m["destination"][1:]).is_dir()]
    for f in ("/etc/resolv.conf", "/etc/hosts"):  # the host's network, where the image has the files
        if os.path.isfile(f) and (rootfs / f[1:]).is_file() and not (rootfs / f[1:]).is_symlink():
            mounts.append({"destination": f, "type": "bind", "source": f, "options": ["rbind", "ro"]})
    for host, target, ro in binds:
        mounts.append(
            {"destination": target, "type": "bind", "source": host, "options": ["rbind", "ro" if ro else "rw"]}
        )
    process: dict = {"terminal": terminal}
    size = console.window_size() if terminal else None
    if size:
        process["consoleSize"] = {"height": size[0], "width": size[1]}
    return {
        "ociVersion": "1.0.2",
        "process": {
            **process,
            "user": {"uid": uid, "gid": gid, "additionalGids": groups},
            "args": argv,
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": workdir or "/",
            "capabilities": {k: CAPS for k in ("bounding", "effective", "permitted")},
        },
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": "strata",
        "mounts": mounts,
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
            "maskedPaths": MASKED,
            "readonlyPaths": READONLY,
        },
    }


def run(spec: dict, tmp: Path, stdio: Stdio = NO_STDIN) -> int:
    """Run *spec* with runc (our stdout and stderr, our stdin or a terminal as *stdio* says; SIGINT
    and SIGTERM passed on)."""
    with tempfile.TemporaryDirectory(dir=tmp, prefix=f"bundle-{os.getpid()}-") as bundle:
        (Path(bundle) / "config.json").write_text(json.dumps(spec))
        name = "strata-" + secrets.token_hex(8)
        try:
            with console.script_fd(stdio.script) as (pass_fds, place_script):
                # (runc passes fd 3 on to the container's process with --preserve-fds)
                fds = {"pass_fds": pass_fds, "preexec_fn": place_script}
                run = ["runc", "run", *(["--preserve-fds", "1"] if pass_fds else []), "--bundle", bundle]
                if stdio.tty:
                    return _run_on_terminal(run, bundle, name, stdio.stdin, fds)
                stdin = None if stdio.stdin else subprocess.DEVNULL
                return wait_passing_signals(subprocess.Popen([*run, name], stdin=stdin, **fds))  # noqa: PLW1509
        finally:
            subprocess.run(["runc", "delete", "--force", name], capture_output=True, timeout=30)


def _run_on_terminal(run: list[str], bundle: str, name: str, forward_stdin: bool, fds: dict) -> int:
    """As conmon does it: runc starts the container detached and hands us the terminal's master on
    a console socket; we, its subreaper, wait for the container's process and relay its terminal.
    (In the foreground runc would need a terminal of its own, which a pipeline does not have.)"""
    console.become_subreaper()
    sock, pid_file = os.path.join(bundle, "console.sock"), os.path.join(bundle, "pid")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(sock)
        listener.listen(1)
        argv = [*run, "--detach", "--console-socket", sock, "--pid-file", pid_file, name]
        starter = subprocess.Popen(argv, stdin=subprocess.DEVNULL, **fds)  # noqa: PLW1509
        master = console.receive_master(listener, starter)
    try:
        if starter.wait(timeout=60) != 0:
            raise OSError(f"runc could not start the container (exit code {starter.returncode})")
        return wait_passing_signals(console.Child(int(Path(pid_file).read_text())), master, forward_stdin)
    finally:
        os.close(master)
