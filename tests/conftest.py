"""Fixtures shared by every test: a fresh store per test, mountpoints, and the real test images."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import SHARED
from unionfs import sharedtables


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_images(work: Path, *args: str) -> subprocess.CompletedProcess:
    """Run make-images.sh against a registry started for it (stopped after); work/oci gets the layouts."""
    state = work / "registry"
    port = free_port()
    start = SHARED / "registry" / "start-registry.sh"
    subprocess.run(["bash", str(start), str(state), "--port", str(port)], check=True, capture_output=True)
    try:
        make = SHARED / "registry" / "make-images.sh"
        cmd = ["bash", str(make), "-r", f"127.0.0.1:{port}", "-w", str(work), *args]
        return subprocess.run(cmd, capture_output=True, text=True)
    finally:
        subprocess.run(["bash", str(SHARED / "registry" / "stop-registry.sh"), str(state)], capture_output=True)


@pytest.fixture(scope="session", autouse=True)
def shared_tables(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The layer tables that strata-overlay mounts share, kept in the session's temp dir (not in
    /var/cache, where a user's would be)."""
    where = tmp_path_factory.mktemp("shared-tables")
    old = os.environ.get(sharedtables.ENV)
    os.environ[sharedtables.ENV] = str(where)
    yield where
    if old is None:
        del os.environ[sharedtables.ENV]
    else:
        os.environ[sharedtables.ENV] = old


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fresh, empty store root for one test."""
    return tmp_path / "store"


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Path]:
    """An empty mountpoint, unmounted at the end of the test whatever happened."""
    mp = tmp_path / "mnt"
    mp.mkdir()
    yield mp
    subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True)
    subprocess.run(["umount", "-l", str(mp)], capture_output=True)


@pytest.fixture(scope="session")
def image_layouts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OCI layouts of the shared test images (tiny, layered, multiarch), built by make-images.sh.

    Returns the work dir: `oci/<name>` layouts, `expected/<name>.tree` trees.
    """
    work = tmp_path_factory.mktemp("images")
    proc = _make_images(work)
    assert proc.returncode == 0, proc.stderr
    return work


@pytest.fixture(scope="session")
def debian_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Debian bookworm (minbase) image, 2 layers, built by make-images.sh --debian (~40 s).

    Returns the work dir: `oci/debian` layout (tag `bookworm`). Needs a Debian mirror; skips without.
    """
    work = tmp_path_factory.mktemp("debian")
    proc = _make_images(work, "--only", "debian", "--debian")
    if proc.returncode != 0:
        pytest.skip(f"cannot build the Debian image here: {proc.stderr.strip().splitlines()[-1:]}")
    return work
