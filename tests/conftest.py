"""Fixtures shared by every test: a fresh store per test and the real test images."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import SHARED


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fresh, empty store root for one test."""
    return tmp_path / "store"


@pytest.fixture(scope="session")
def debian_layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real Debian bookworm (minbase) image, 2 layers, built by make-images.sh --debian (~40 s).

    Returns the work dir: `oci/debian` layout (tag `bookworm`). Needs a Debian mirror; skips without.
    """
    base = tmp_path_factory.mktemp("debian")
    state, work = base / "registry", base / "work"
    port = free_port()
    subprocess.run(
        ["bash", str(SHARED / "registry" / "start-registry.sh"), str(state), "--port", str(port)],
        check=True,
        capture_output=True,
    )
    try:
        proc = subprocess.run(
            [
                "bash",
                str(SHARED / "registry" / "make-images.sh"),
                "-r",
                f"127.0.0.1:{port}",
                "-w",
                str(work),
                "--only",
                "debian",
                "--debian",
            ],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot build the Debian image here: {proc.stderr.strip().splitlines()[-1:]}")
        yield work
    finally:
        subprocess.run(["bash", str(SHARED / "registry" / "stop-registry.sh"), str(state)], capture_output=True)


@pytest.fixture(scope="session")
def image_layouts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """OCI layouts of the shared test images (tiny, layered, multiarch), built by make-images.sh.

    Returns the work dir: `oci/<name>` layouts, `expected/<name>.tree` trees.
    """
    base = tmp_path_factory.mktemp("images")
    state, work = base / "registry", base / "work"
    port = free_port()
    subprocess.run(
        ["bash", str(SHARED / "registry" / "start-registry.sh"), str(state), "--port", str(port)],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            ["bash", str(SHARED / "registry" / "make-images.sh"), "-r", f"127.0.0.1:{port}", "-w", str(work)],
            check=True,
            capture_output=True,
        )
        yield work
    finally:
        subprocess.run(["bash", str(SHARED / "registry" / "stop-registry.sh"), str(state)], capture_output=True)
