"""Two tags of one image that came as different manifests (gzip and zstd) keep their own digests."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.helpers import strata

from .conftest import RegistryInfo


def remote_digest(ref: str) -> str:
    out = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--format", "{{.Digest}}", f"docker://{ref}"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def test_digests_and_pushes_follow_each_tag(registry: RegistryInfo, root: Path) -> None:
    host = registry.host
    gzip_digest, zstd_digest = remote_digest(f"{host}/layered:latest"), remote_digest(f"{host}/layered:zstd")
    assert gzip_digest != zstd_digest
    strata(root, "pull", "-q", f"{host}/layered:latest")
    strata(root, "pull", "-q", f"{host}/layered:zstd")
    rows = strata(root, "images", "--digests", "--format", "{{.Tag}} {{.Digest}}").stdout.decode().splitlines()
    assert sorted(rows) == sorted([f"latest {gzip_digest}", f"zstd {zstd_digest}"])
    strata(root, "tag", f"{host}/layered:latest", f"{host}/tagcopy:gz")
    strata(root, "push", "-q", f"{host}/tagcopy:gz")
    assert remote_digest(f"{host}/tagcopy:gz") == gzip_digest
