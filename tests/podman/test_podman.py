"""podman run on a containers/storage overlay driver with mount_program = fuse-overlayfs / strata-overlay.

The layered test image has no programs, so the test first adds the host's `cat` and `ls` (with the
shared libraries they need) in a buildah container, through the mount program, and commits it.

Runtime in this sandbox: crun refuses the cgroup setup ("cgroups in hybrid mode not supported,
drop all controllers from cgroupv2": cgroup v1 plus a cgroup2 mount with the hugetlb controller),
and podman's default RLIMIT_NOFILE/NPROC of 1048576 cannot be set without CAP_SYS_RESOURCE; runc
with cgroupfs and lower ulimits (the private containers.conf of conftest.Storage) works.
"""

from __future__ import annotations

import difflib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import PROGRAMS, Storage

TOOLS = ["/usr/bin/cat", "/usr/bin/ls"]


def _libs(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    return re.findall(r"(/\S+) \(0x", out)


def build_tools_image(s: Storage, host: str) -> str:
    """layered:latest plus cat and ls, committed as localhost/tools (built through the mount program)."""
    pol = f"--signature-policy={s.policy}"
    ctr = s.buildah("from", "--tls-verify=false", pol, "--name", "tools", f"{host}/layered:latest")
    merged = Path(s.buildah("mount", ctr))
    for f in sorted({*TOOLS, *(lib for t in TOOLS for lib in _libs(t))}):
        dst = merged / f.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst)  # follows symlinks: the real library under the soname
    s.buildah("umount", ctr)
    s.buildah("commit", pol, ctr, "localhost/tools:latest")
    s.buildah("rm", ctr)
    return "localhost/tools:latest"


def _run(s: Storage, image: str, *cmd: str) -> subprocess.CompletedProcess:
    return s.podman(
        "run",
        "--rm",
        "--network=none",
        "--hostname=strata-test",
        f"--entrypoint={cmd[0]}",
        image,
        *cmd[1:],
        check=False,
    )


def podman_flow(s: Storage, host: str) -> dict:
    if shutil.which("podman") is None or shutil.which("runc") is None:
        pytest.skip("podman/runc not installed (scripts/setup.sh installs them)")
    image = build_tools_image(s, host)
    res = {"released_after_build": s.wait_released()}
    first = _run(s, image, "/usr/bin/cat", "/etc/hostname")
    if first.returncode in (125, 126, 127) and b"OCI" in first.stderr:
        pytest.skip(f"no container runtime works here: {first.stderr.decode(errors='replace').strip()}")
    res["hostname"] = (first.returncode, first.stdout.decode())
    for key, cmd in {
        "ls_olddir": ["/usr/bin/ls", "-a", "/olddir", "/olddir/sub"],
        "cat_files": ["/usr/bin/cat", "/etc/motd", "/data/remove-me.txt", "/olddir/new.txt", "/data/hardlink-b"],
        "ls_gone": ["/usr/bin/ls", "/gone"],  # deleted by a whiteout in layer 3
        "ls_long": ["/usr/bin/ls", "-ln", "--time-style=+%Y", "/data", "/srv", "/usr/local/bin"],
    }.items():
        p = _run(s, image, *cmd)
        res[key] = (p.returncode, p.stdout.decode())
    res["released_after_run"] = s.wait_released()
    return res


_results: dict[str, dict] = {}


@pytest.fixture
def flow(make_storage, registry):
    def get(name: str) -> dict:
        if name not in _results:
            _results[name] = podman_flow(make_storage(name), registry[0])
        return _results[name]

    return get


@pytest.mark.parametrize("prog", list(PROGRAMS))
def test_podman_run(flow, prog: str) -> None:
    r = flow(prog)
    assert r["released_after_build"] == ([], [])
    assert r["hostname"] == (0, "strata-test")  # podman's own /etc/hostname (no newline), bind-mounted
    assert r["ls_olddir"] == (0, "/olddir:\n.\n..\nnew.txt\nsub\n\n/olddir/sub:\n.\n..\nfresh.txt\n")
    assert r["cat_files"] == (
        0,
        "layer 1 motd\nrecreated in layer 5\nnew content in layer 4\nhardlinked\n",
    )
    assert r["ls_gone"][0] != 0 and r["ls_gone"][1] == ""
    assert "1234 5678" in r["ls_long"][1] and "sgid-tool" in r["ls_long"][1]
    # podman's cleanup process unmounts the container: no mount, no mount-program process left
    assert r["released_after_run"] == ([], [])


def test_podman_strata_same_as_fuse_overlayfs(flow) -> None:
    ref, got = flow("fuse-overlayfs"), flow("strata-overlay")
    # known difference: strata-overlay reports st_nlink 1 for every directory that comes from the
    # lower layers (a legal "unknown subdirectory count", as btrfs; find -noleaf), fuse-overlayfs
    # and kernel overlayfs report the real count for a directory that only one layer has
    ref, got = dict(ref), dict(got)
    for r in (ref, got):
        r["ls_long"] = (r["ls_long"][0], re.sub(r"(?m)^(d\S+)\s+\d+ ", r"\1 N ", r["ls_long"][1]))
    for key in ref:
        diff = "\n".join(difflib.unified_diff(str(ref[key]).split("\\n"), str(got[key]).split("\\n"), lineterm=""))
        assert got[key] == ref[key], f"{key} (fuse-overlayfs -> strata-overlay):\n{diff}"
