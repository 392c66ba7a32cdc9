"""A real `docker-registry` on loopback with the shared test images, started once per session."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import free_port

SHARED = Path(os.environ.get("STRATA_SHARED") or Path(__file__).resolve().parents[2] / ".." / "shared").resolve()
SCRIPTS = SHARED / "registry"


@dataclass
class RegistryInfo:
    host: str
    state: Path
    storage: Path
    work: Path | None = None
    digests: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def log(self) -> Path:
        return self.state / "registry.log"

    def log_mark(self) -> int:
        return self.log.stat().st_size

    def requests_since(self, mark: int) -> list[str]:
        """Access-log lines (`"GET /v2/... HTTP/1.1" 200`) written after `mark`."""
        time.sleep(0.2)  # the registry logs a request just after answering it
        with open(self.log, "rb") as f:
            f.seek(mark)
            text = f.read().decode(errors="replace")
        return [line.split('"')[1] for line in text.splitlines() if line.startswith("127.0.0.1 - ") and '"' in line]

    def blob_path(self, digest: str) -> Path:
        hex_ = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"


def start_registry(state: Path, *args: str) -> RegistryInfo:
    if not (SCRIPTS / "start-registry.sh").is_file():
        pytest.skip(f"registry scripts not found in {SCRIPTS} (set STRATA_SHARED)")
    port = free_port()
    subprocess.run(
        ["bash", str(SCRIPTS / "start-registry.sh"), str(state), "--port", str(port), *args],
        check=True,
        capture_output=True,
    )
    env = dict(line.split("=", 1) for line in (state / "registry.env").read_text().splitlines() if "=" in line)
    return RegistryInfo(env["REGISTRY_HOST"], state, Path(env["REGISTRY_STORAGE"]), env=env)


def stop_registry(info: RegistryInfo) -> None:
    subprocess.run(["bash", str(SCRIPTS / "stop-registry.sh"), str(info.state)], capture_output=True)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryInfo]:
    """Plain-HTTP registry holding tiny, layered(:zstd,:uncompressed) and multiarch(:docker)."""
    base = tmp_path_factory.mktemp("registry")
    info = start_registry(base / "state")
    try:
        info.work = base / "work"
        digests = base / "digests.txt"
        subprocess.run(
            ["bash", str(SCRIPTS / "make-images.sh"), "-r", info.host, "-w", str(info.work), "--digests", str(digests)],
            check=True,
            capture_output=True,
        )
        for line in digests.read_text().splitlines():
            name, digest, *_ = line.split()
            info.digests[name] = digest
        yield info
    finally:
        stop_registry(info)


@pytest.fixture(scope="session")
def auth_registry(registry: RegistryInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryInfo]:
    """A second registry on the same storage with htpasswd auth (alice / s3cret), plain HTTP."""
    info = start_registry(
        tmp_path_factory.mktemp("auth-registry"), "--auth", "alice:s3cret", "--storage", str(registry.storage)
    )
    info.work, info.digests = registry.work, registry.digests
    try:
        yield info
    finally:
        stop_registry(info)


@pytest.fixture(scope="session")
def tls_registry(registry: RegistryInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryInfo]:
    """Same storage over HTTPS (self-signed CA) with auth alice / s3cret."""
    info = start_registry(
        tmp_path_factory.mktemp("tls-registry"), "--auth", "alice:s3cret", "--tls", "--storage", str(registry.storage)
    )
    info.work, info.digests = registry.work, registry.digests
    try:
        yield info
    finally:
        stop_registry(info)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials in a temp DOCKER_CONFIG, fast retries, no inherited insecure-registry list."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    monkeypatch.setenv("STRATA_RETRY_BACKOFF", "0.05")
    monkeypatch.delenv("STRATA_INSECURE_REGISTRIES", raising=False)
    monkeypatch.setenv("STRATA_CERTS_D", str(tmp_path / "certs.d"))


@dataclass
class TokenRegistry:
    host: str
    issuer: object  # tokenserver.TokenServer
    digests: dict[str, str]


@pytest.fixture(scope="session")
def token_registry(registry: RegistryInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenRegistry]:
    """A registry with `auth: token` trusting a token issuer run by the tests (same storage)."""
    from .tokenserver import TokenServer, start_token_registry

    work = tmp_path_factory.mktemp("token-registry")
    issuer = TokenServer(work)
    realm = issuer.start()
    try:
        proc, host = start_token_registry(work, registry.storage, realm, issuer.cert)
        try:
            yield TokenRegistry(host, issuer, registry.digests)
        finally:
            proc.terminate()
            proc.wait(10)
    finally:
        issuer.stop()
