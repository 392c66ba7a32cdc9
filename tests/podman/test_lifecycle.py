"""The mount program's life as containers/storage drives it (buildah mount/umount/rm, commit).

containers/storage runs `PROG -o OPTIONS MERGED` with stderr on a pipe and waits for EOF on it, so
the program must daemonize without keeping the pipe; it unmounts with `fusermount3 -u` from
another process (never through the program), so the daemon must exit on its own.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from .conftest import PROGRAMS, Storage


def _fds(pid: int) -> dict[int, str]:
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass
    return out


def _fstype(mp: str) -> str:
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if parts[1] == mp:
                return parts[2]
    return ""


def _argv(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


@pytest.mark.parametrize("prog", list(PROGRAMS))
def test_mount_umount_rm_leave_nothing(make_storage, registry, prog: str) -> None:
    s: Storage = make_storage(prog)
    host = registry[0]
    pol = f"--signature-policy={s.policy}"
    ctr = s.buildah("from", "--tls-verify=false", pol, "--name", "life", f"{host}/tiny:latest")
    assert s.wait_released() == ([], [])  # from does not mount

    t0 = time.monotonic()
    merged = s.buildah("mount", ctr)
    mount_time = time.monotonic() - t0
    assert s.fuse_mounts() == [merged]
    assert _fstype(merged) == f"fuse.{prog}"
    pids = s.program_pids()
    assert len(pids) == 1
    argv = _argv(pids[0])
    # exactly PROG -o OPTIONS MERGED (strata-overlay runs under its Python interpreter)
    assert argv[-4:] == [str(PROGRAMS[prog]), "-o", argv[-2], merged]
    opts = argv[-2].split(",")
    assert opts[0].startswith(f"lowerdir={s.graph}/overlay/l/") and "volatile" in opts and "" in opts
    # the daemon does not keep buildah's stderr pipe (buildah returned: it saw EOF on it)
    fds = _fds(pids[0])
    assert all(not fds.get(fd, "").startswith("pipe:") for fd in (0, 1, 2)), fds
    assert os.listdir(merged)  # tiny's content is served
    assert mount_time < 30

    s.buildah("umount", ctr)
    t0 = time.monotonic()
    assert s.wait_released() == ([], []), "buildah umount left a mount or a mount-program process"
    release_time = time.monotonic() - t0
    assert release_time < 5
    assert not os.path.exists(merged)  # containers/storage rmdirs MERGED after unmounting

    merged = s.buildah("mount", ctr)  # mounted again (the upper is read back), twice, then removed
    new = s.program_pids()
    assert len(new) == 1 and new != pids
    assert s.buildah("mount", ctr) == merged  # reference-counted by containers/storage
    assert s.program_pids() == new and s.fuse_mounts() == [merged]
    s.buildah("rm", ctr)  # unmounts whatever the count
    assert s.wait_released() == ([], []), "buildah rm left a mount or a mount-program process"
    assert s.buildah("containers", "-q") == ""


@pytest.mark.parametrize("prog", list(PROGRAMS))
def test_mount_program_error_reaches_buildah(make_storage, registry, prog: str) -> None:
    """A layer directory that vanished: the program fails, buildah reports it, nothing is left."""
    s: Storage = make_storage(prog)
    pol = f"--signature-policy={s.policy}"
    ctr = s.buildah("from", "--tls-verify=false", pol, "--name", "broken", f"{registry[0]}/tiny:latest")
    # the base image layer (the only one without a "lower" file); a missing container diff dir
    # would be re-created by containers/storage itself
    base = [p.resolve() for p in (s.graph / "overlay" / "l").iterdir() if not (p.resolve().parent / "lower").exists()]
    assert len(base) == 1
    victim = base[0]
    hidden = victim.with_name(victim.name + ".hidden")
    victim.rename(hidden)
    try:
        out = s._run(["buildah", *s._common(), "mount", ctr], check=False)
    finally:
        hidden.rename(victim)
    assert out.returncode != 0
    err = out.stderr.decode(errors="replace")
    assert "using mount program" in err and str(PROGRAMS[prog]) in err, err
    assert s.wait_released() == ([], [])
    merged = s.buildah("mount", ctr)  # works again once the layer is back
    assert os.listdir(merged)
    s.buildah("umount", ctr)
    assert s.wait_released() == ([], [])
