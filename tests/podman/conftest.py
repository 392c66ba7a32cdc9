"""Real buildah/podman against a private containers/storage whose overlay driver uses a mount program.

Every test gets its own graphroot/runroot/config files (never the machine's own storage) and
removes its containers, images, FUSE mounts and mount-program processes in a finalizer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.helpers import REPO, SHARED

STRATA_OVERLAY = REPO / ".venv" / "bin" / "strata-overlay"
FUSE_OVERLAYFS = Path("/usr/bin/fuse-overlayfs")
PROGRAMS = {"fuse-overlayfs": FUSE_OVERLAYFS, "strata-overlay": STRATA_OVERLAY}
CMD_TIMEOUT = 120  # a mount program that keeps the stderr pipe open hangs buildah: fail, don't hang


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"not installed: {' '.join(missing)} (scripts/setup.sh installs them)")


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real docker-registry on loopback with the test images pushed: (host:port, work dir)."""
    _need("buildah", "skopeo", "umoci", "fuse-overlayfs", "docker-registry")
    base = tmp_path_factory.mktemp("podman-registry")
    state, work = base / "registry", base / "work"
    port = free_port()
    subprocess.run(
        ["bash", str(SHARED / "registry" / "start-registry.sh"), str(state), "--port", str(port)],
        check=True,
        capture_output=True,
        timeout=CMD_TIMEOUT,
    )
    try:
        host = f"127.0.0.1:{port}"
        proc = subprocess.run(
            ["bash", str(SHARED / "registry" / "make-images.sh"), "-r", host, "-w", str(work)],
            capture_output=True,
            text=True,
            timeout=CMD_TIMEOUT,
        )
        assert proc.returncode == 0, proc.stderr
        yield host, work
    finally:
        subprocess.run(
            ["bash", str(SHARED / "registry" / "stop-registry.sh"), str(state)], capture_output=True, timeout=60
        )


class Storage:
    """A private containers/storage (graphroot, runroot, storage.conf, registries.conf, policy)."""

    def __init__(self, base: Path, program: Path, registry_host: str) -> None:
        self.base = base
        self.program = program
        self.graph = base / "root"
        self.run = Path(tempfile.mkdtemp(prefix="strata-rr-"))  # podman: runroot < 50 characters
        self.tmp = base / "tmp"
        for d in (self.graph, self.tmp):
            d.mkdir(parents=True)
        self.storage_conf = base / "storage.conf"
        self.storage_conf.write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{self.graph}"\n'
            f'runroot = "{self.run}"\n'
            "[storage.options.overlay]\n"
            f'mount_program = "{program}"\n'
        )
        self.registries_conf = base / "registries.conf"
        self.registries_conf.write_text(
            f'unqualified-search-registries = []\n[[registry]]\nlocation = "{registry_host}"\ninsecure = true\n'
        )
        self.policy = base / "policy.json"
        self.policy.write_text('{"default":[{"type":"insecureAcceptAnything"}]}\n')
        # podman: this sandbox has cgroup v1 (crun refuses "hybrid mode") and no CAP_SYS_RESOURCE
        # (podman's default RLIMIT_NOFILE/NPROC of 1048576 cannot be set): runc, cgroupfs, low ulimits
        self.containers_conf = base / "containers.conf"
        self.containers_conf.write_text(
            "[containers]\n"
            'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            'runtime = "runc"\n'
            f'tmp_dir = "{self.tmp}"\n'
            f'static_dir = "{self.graph}/libpod"\n'
            f'volume_path = "{self.graph}/volumes"\n'
        )
        self.env = dict(
            os.environ,
            CONTAINERS_STORAGE_CONF=str(self.storage_conf),
            CONTAINERS_REGISTRIES_CONF=str(self.registries_conf),
            CONTAINERS_CONF=str(self.containers_conf),
            TMPDIR=str(self.tmp),
        )

    def _common(self) -> list[str]:
        return [
            "--root",
            str(self.graph),
            "--runroot",
            str(self.run),
            "--storage-driver",
            "overlay",
            "--storage-opt",
            f"overlay.mount_program={self.program}",
        ]

    def _run(self, cmd: list[str], check: bool, input: bytes | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, env=self.env, capture_output=True, input=input, timeout=CMD_TIMEOUT)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr.decode(errors='replace')}")
        return proc

    def buildah(self, *args: str, check: bool = True) -> str:
        return self._run(["buildah", *self._common(), *args], check).stdout.decode().strip()

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self._run(["podman", *self._common(), *args], check)

    # -- what the mount program left behind --------------------------------------------------
    def fuse_mounts(self) -> list[str]:
        """FUSE mounts (of any program) under this storage's graphroot."""
        out = []
        with open("/proc/mounts") as f:
            for line in f:
                _src, mp, fstype = line.split()[:3]
                mp = mp.replace("\\040", " ")
                if fstype.startswith("fuse") and mp.startswith(str(self.graph) + "/"):
                    out.append(mp)
        return out

    def program_pids(self) -> list[int]:
        """Live processes whose command line mentions this storage's graphroot and the mount program."""
        pids = []
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                argv = (p / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(self.program.name.encode() in a for a in argv[:2]) and str(self.graph).encode() in b" ".join(argv):
                pids.append(int(p.name))
        return pids

    def wait_released(self, timeout: float = 10.0) -> tuple[list[str], list[int]]:
        """Wait until no FUSE mount and no mount-program process of this storage is left."""
        deadline = time.monotonic() + timeout
        while True:
            mounts, pids = self.fuse_mounts(), self.program_pids()
            if (not mounts and not pids) or time.monotonic() > deadline:
                return mounts, pids
            time.sleep(0.05)

    def cleanup(self) -> None:
        """Remove everything this storage made, whatever state a failed test left it in."""
        for cmd in (["buildah", "rm", "-a"], ["podman", "rm", "-a", "-f"]):
            try:
                self._run([cmd[0], *self._common(), *cmd[1:]], check=False)
            except subprocess.TimeoutExpired:
                pass
        for mp in sorted(self.fuse_mounts(), reverse=True):
            subprocess.run(["fusermount3", "-u", mp], capture_output=True)
        for pid in self.program_pids():  # only ours: their argv names our private graphroot
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        mounts = []
        with open("/proc/mounts") as f:
            for line in f:
                mp = line.split()[1].replace("\\040", " ")
                if any(mp == str(d) or mp.startswith(f"{d}/") for d in (self.base, self.run)):
                    mounts.append(mp)
        for mp in sorted(mounts, reverse=True):  # FUSE leftovers, then the private bind of $G/overlay
            subprocess.run(["umount", "-l", mp], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)
        shutil.rmtree(self.run, ignore_errors=True)


@pytest.fixture
def make_storage(tmp_path: Path, registry: tuple[str, Path]) -> Iterator:
    """make_storage(name) -> a fresh private Storage using that mount program; cleaned up after."""
    made: list[Storage] = []

    def make(name: str) -> Storage:
        s = Storage(tmp_path / f"storage-{name}", PROGRAMS[name], registry[0])
        made.append(s)
        return s

    yield make
    for s in made:
        s.cleanup()
