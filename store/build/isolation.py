"""Run a command in a mounted rootfs as buildah's chroot isolation does: private mount, UTS and IPC
namespaces, /proc, /sys and /dev mounted inside (gone with the namespace), then chroot."""

from __future__ import annotations

import ctypes
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from ..errors import InvalidInput

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


def _table(path: Path) -> dict[str, list[str]]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    return {f[0]: f for f in (line.split(":") for line in lines) if len(f) >= 4 and f[0]}


def run(
    rootfs: Path, argv: list[str], env: Mapping[str, str], workdir: str, user: str, timeout: float | None = None
) -> int:
    """Run *argv* in *rootfs*; its output goes to ours; returns its exit status (127: not found)."""
    uid, gid, groups = user_ids(rootfs, user)
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
        os.chroot(root)
        os.chdir(workdir or "/")
        os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)

    try:
        proc = subprocess.run(argv, env=dict(env), preexec_fn=inside, timeout=timeout, check=False)  # noqa: PLW1509
    except FileNotFoundError:
        return 127
    except PermissionError:
        return 126
    return proc.returncode
