"""Every mutating command, SIGKILLed at its file-changing system calls, leaves a store that the next
command finds consistent: `strata system check` (which first finishes what the killed command
began) reports no problem, and loading, listing and removing the image then work.

The kill points are found by tracing the command once (strace), then each is hit with strace's
fault injection: ``-e inject=SYSCALL:signal=KILL:when=N`` kills the process as it enters the N-th
call of SYSCALL, before the call runs.  CI takes an evenly spread sample of at most
``SAMPLE`` points per command; ``STRATA_SLOW=1`` takes every one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from store.store import Store
from tests.helpers import REPO, strata

CHANGING = (
    "rename,renameat,renameat2,unlink,unlinkat,rmdir,mkdir,mkdirat,link,linkat,symlink,symlinkat,"
    "fsync,fdatasync,ftruncate,fchmod,fchmodat,fchown,fchownat,setxattr,lsetxattr,fsetxattr,write,pwrite64"
)
SAMPLE = 12
TIMEOUT = 120
STRATA = str(REPO / ".venv" / "bin" / "strata")

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")


def _run_traced(root: Path, args: list[str], strace_args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # (no .pyc writes among the kill points)
    cmd = ["strace", "-f", "-qq", *strace_args, STRATA, "--root", str(root), *args]
    return subprocess.run(cmd, capture_output=True, env=env, timeout=TIMEOUT, stdin=subprocess.DEVNULL)


def kill_points(template: Path, work: Path, args: list[str]) -> list[tuple[str, int]]:
    """(syscall, n) for each file-changing call that *args* makes on a copy of *template*."""
    store = work / "trace-store"
    _copy(template, store)
    log = work / "trace.log"
    proc = _run_traced(store, args, ["-o", str(log), "-e", f"trace={CHANGING}"])
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    calls: Counter[str] = Counter()
    points = []
    for line in log.read_text().splitlines():
        if "resumed>" in line or " --- " in line or "+++" in line:
            continue
        name = line.split(None, 1)[1].split("(", 1)[0]
        calls[name] += 1
        points.append((name, calls[name]))
    shutil.rmtree(store)
    if os.environ.get("STRATA_SLOW") or len(points) <= SAMPLE:
        return points
    step = len(points) / SAMPLE
    return [points[int(i * step)] for i in range(SAMPLE)]


def _copy(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True, timeout=TIMEOUT)


def _consistent(root: Path, after: str) -> None:
    proc = strata(root, "system", "check", check=False)
    out = proc.stdout.decode()
    assert proc.returncode == 0 and "consistent" in out.splitlines()[-1], f"{after}:\n{out}{proc.stderr.decode()}"


def _survives(
    template: Path, work: Path, layout: Path, args: list[str], then: list[list[str]], hit: float = 0.8
) -> int:
    """Kill *args* at each of its kill points, then run the commands *then* and the usual ones;
    return how many kill points were hit (at least the share *hit* of them: see below)."""
    points = kill_points(template, work, args)
    assert points
    store = work / "store"
    killed = 0
    for name, n in points:
        at = f"{' '.join(args)} killed at {name} #{n}"
        _copy(template, store)
        proc = _run_traced(store, args, ["-o", "/dev/null", "-e", f"inject={name}:signal=KILL:when={n}"])
        # (threads that write, such as the compressor's, make a few points move between runs)
        killed += proc.returncode == -9 or b"+++ killed by SIGKILL" in proc.stderr
        _consistent(store, at)
        for cmd in then:
            strata(store, *cmd)
        strata(store, "load", "-i", str(layout))
        image = Store(store).images.all()[0].id
        strata(store, "tag", image, "layered:latest")
        assert b"layered" in strata(store, "images").stdout, at
        strata(store, "rmi", "-f", "layered:latest")
        _consistent(store, at + ", then load, images and rmi")
    assert killed >= hit * len(points), f"{' '.join(args)}: only {killed} of {len(points)} kill points were hit"
    return killed


@pytest.fixture(scope="module")
def templates(image_layouts: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Stores to start from: empty; the layered image, tagged; and that with a changed container."""
    base = tmp_path_factory.mktemp("kill-templates")
    layout = image_layouts / "oci" / "layered"
    empty = base / "empty"
    strata(empty, "images")
    tagged = base / "tagged"
    strata(tagged, "load", "-i", str(layout))
    strata(tagged, "tag", Store(tagged).images.all()[0].id, "layered:latest")
    with_ctr = base / "container"
    _copy(tagged, with_ctr)
    strata(with_ctr, "create", "--name", "c1", "layered:latest")
    c = Store(with_ctr).containers.find("c1")
    upper = Store(with_ctr).containers.upper(c.id)
    (upper / "added").write_bytes(b"a file the container wrote\n")
    tree = base / "rootfs"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "motd").write_text("imported\n")
    rootfs = base / "rootfs.tar"
    subprocess.run(["tar", "-cf", str(rootfs), "-C", str(tree), "."], check=True, timeout=TIMEOUT)
    return {"empty": empty, "tagged": tagged, "container": with_ctr, "layout": layout, "rootfs": rootfs}


AGAIN = [["commit", "c1", "committed:1"], ["rm", "c1"], ["image", "prune", "-a", "-f"]]


@pytest.mark.parametrize(
    ("start", "args", "then", "hit"),
    [
        ("empty", ["load", "-i", "{layout}"], [], 0.8),
        ("tagged", ["rmi", "layered:latest"], [], 0.8),
        ("tagged", ["tag", "layered:latest", "other:1"], [], 0.8),
        ("tagged", ["image", "prune", "-a", "-f"], [], 0.8),
        # (commit again, then remove it all; its layer is compressed in threads, whose writes
        # interleave differently from run to run: fewer of the traced points come again)
        ("container", ["commit", "c1", "committed:1"], AGAIN, 0.5),
        ("container", ["rm", "c1"], [], 0.8),
        ("tagged", ["import", "{rootfs}", "imported:1"], [], 0.5),
    ],
    ids=["load", "rmi", "tag", "prune", "commit", "rm", "import"],
)
def test_killed_command_leaves_a_consistent_store(
    templates, tmp_path: Path, start: str, args: list[str], then: list[list[str]], hit: float
) -> None:
    layout = templates["layout"]
    args = [a.format(layout=layout, rootfs=templates["rootfs"]) for a in args]
    n = _survives(templates[start], tmp_path, layout, args, then, hit)
    print(f"{' '.join(args[:2])}: killed at {n} points, the store survived each")
