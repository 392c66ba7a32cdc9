"""Errors a user can act on: one line, non-zero exit, no traceback, and the store left as it was."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from store.store import Store
from tests.conftest import free_port
from tests.helpers import snapshot, strata

from .conftest import RegistryInfo
from .faultproxy import Fault, FaultProxy


def state(root: Path) -> dict:
    """The store's content (lock files, which any operation may create, left out)."""
    return {k: v for k, v in snapshot(root).items() if not k.endswith("lock")}


def fails(root: Path, *args: str) -> str:
    """Run strata expecting a clean failure; return the one-line error."""
    Store(root)
    before = state(root)
    proc = strata(root, *args, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1, (proc.returncode, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert state(root) == before
    return err.strip()


def test_unknown_host(root: Path) -> None:
    assert fails(root, "pull", "nosuch.invalid/app") == "Error: cannot reach registry nosuch.invalid: no such host"


def test_connection_refused(root: Path) -> None:
    port = free_port()
    assert fails(root, "pull", f"127.0.0.1:{port}/app") == (
        f"Error: cannot reach registry 127.0.0.1:{port}: connection refused"
    )


def test_unknown_tag_and_repository(registry: RegistryInfo, root: Path) -> None:
    assert fails(root, "pull", f"{registry.host}/tiny:nosuch") == (
        f"Error: manifest for {registry.host}/tiny:nosuch not found: manifest unknown: manifest unknown"
    )
    err = fails(root, "pull", f"{registry.host}/no/such/repo")
    assert err.startswith(f"Error: manifest for {registry.host}/no/such/repo:latest not found:")
    err = fails(root, "pull", f"{registry.host}/tiny@sha256:" + "0" * 64)
    assert "not found" in err


def test_invalid_reference_and_platform(registry: RegistryInfo, root: Path) -> None:
    assert "invalid reference format" in fails(root, "pull", "UPPER/Case")
    assert "invalid platform" in fails(root, "pull", "--platform", "linux", f"{registry.host}/multiarch")


@pytest.fixture
def corrupt_tiny_layer(registry: RegistryInfo) -> Iterator[str]:
    """Flip bytes in the middle of tiny's layer blob in the registry's storage (same size)."""
    digest = "sha256:43b02861c89ab5968b2ddc14e6eb4b3cfef5b89fbcdeb6426c16e6dd71316b42"
    path = registry.blob_path(digest)
    original = path.read_bytes()
    mid = len(original) // 2
    path.write_bytes(original[:mid] + bytes(b ^ 0xFF for b in original[mid : mid + 8]) + original[mid + 8 :])
    try:
        yield digest
    finally:
        path.write_bytes(original)


def test_registry_sending_wrong_bytes_keeps_nothing(
    registry: RegistryInfo, root: Path, corrupt_tiny_layer: str
) -> None:
    err = fails(root, "pull", f"{registry.host}/tiny")
    assert err.startswith(f"Error: blob {corrupt_tiny_layer} from {registry.host}/tiny: digest mismatch")
    assert not list((root / "tmp").iterdir())


@pytest.fixture
def proxy(registry: RegistryInfo) -> Iterator[FaultProxy]:
    p = FaultProxy(registry.host)
    p.host = p.start()  # type: ignore[attr-defined]
    try:
        yield p
    finally:
        p.stop()


def test_retries_on_5xx_429_and_dropped_connections(proxy: FaultProxy, root: Path) -> None:
    big = "sha256:7aff05d01dd1a7028952bb0aad998c4d04bfac67cf0ab74d7029d05b16178cfa"
    second = "sha256:89d73a2a43282f23e02d5d6ce21ab2938a6fba2fbef2463f738af3762719fceb"
    proxy.faults += [
        Fault("GET /v2/layered/manifests/latest", "503", times=2),
        Fault(f"GET /v2/layered/blobs/{big}", "drop"),
        Fault(f"GET /v2/layered/blobs/{big}", "drop-early"),
        Fault(f"GET /v2/layered/blobs/{second}", "drop"),
        Fault("GET /v2/layered/blobs/sha256:ae493c", "429", retry_after="1"),
        Fault("GET /v2/layered/blobs/sha256:b76f1f", "500"),
    ]
    start = time.monotonic()
    proc = strata(root, "pull", f"{proxy.host}/layered")  # type: ignore[attr-defined]
    assert time.monotonic() - start >= 1.0  # Retry-After honoured
    assert all(f.hits == f.times for f in proxy.faults)
    assert proc.stdout.decode().count("Pull complete") == 5
    assert len([line for line in proxy.log if big in line]) == 3
    # a blob downloaded to a file resumes where the dropped connection broke off
    assert [line for line in proxy.log if second in line][-1].endswith(" range=bytes=343-")
    rec = Store(root).resolve(f"{proxy.host}/layered")  # type: ignore[attr-defined]
    assert [x.digest for x in rec.layers][:2] == [big, second]


def test_persistent_5xx_gives_up_cleanly(proxy: FaultProxy, root: Path) -> None:
    proxy.faults.append(Fault("/blobs/", "503", times=1000))
    err = fails(root, "pull", f"{proxy.host}/tiny")  # type: ignore[attr-defined]
    assert "registry error (unavailable: injected fault) after 5 attempts" in err
    assert 5 <= sum("/blobs/" in line for line in proxy.log) <= 6


def test_429_without_end_is_reported(proxy: FaultProxy, root: Path) -> None:
    proxy.faults.append(Fault("/manifests/", "429", times=1000, retry_after="0"))
    assert "toomanyrequests" in fails(root, "pull", f"{proxy.host}/tiny")  # type: ignore[attr-defined]


def test_push_unknown_image_and_unreachable(root: Path) -> None:
    assert fails(root, "push", "127.0.0.1:1/nothing:here") == "Error: No such image: 127.0.0.1:1/nothing:here"


@pytest.mark.parametrize("limit", [1, 2, 4])
def test_parallel_downloads_are_bounded(proxy: FaultProxy, root: Path, limit: int) -> None:
    proxy.delay = 0.3  # every blob answer takes a while: downloads overlap as much as allowed
    strata(root, "pull", "--max-concurrent-downloads", str(limit), f"{proxy.host}/layered")  # type: ignore[attr-defined]
    assert proxy.max_in_flight == limit


def test_a_pull_failing_on_one_layer_keeps_none_of_the_others(proxy: FaultProxy, root: Path) -> None:
    """The layers that did arrive go too: a failed pull leaves the store as it was."""
    proxy.faults.append(Fault("GET /v2/layered/blobs/sha256:b76f1f", "503", times=1000))
    err = fails(root, "pull", f"{proxy.host}/layered")  # type: ignore[attr-defined]
    assert "after 5 attempts" in err
    assert any("/blobs/sha256:7aff05" in line for line in proxy.log)  # (another layer was fetched)
    assert Store(root).layers.all() == [] and Store(root).blobs.all() == []
