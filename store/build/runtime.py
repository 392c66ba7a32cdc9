"""Run a command in a mounted rootfs through an OCI runtime (runc), as Docker does: a generated
config.json with the process's user, environment and directory, new mount, PID, IPC and UTS
namespaces, the host's network, Docker's default capabilities and masked paths."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

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
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
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


def run(spec: dict, tmp: Path) -> int:
    """Run *spec* with runc (our stdin, stdout and stderr; SIGINT and SIGTERM passed on)."""
    with tempfile.TemporaryDirectory(dir=tmp, prefix=f"bundle-{os.getpid()}-") as bundle:
        (Path(bundle) / "config.json").write_text(json.dumps(spec))
        name = "strata-" + secrets.token_hex(8)
        proc = subprocess.Popen(["runc", "run", "--bundle", bundle, name])
        try:
            return wait_passing_signals(proc)
        finally:
            subprocess.run(["runc", "delete", "--force", name], capture_output=True, timeout=30)
