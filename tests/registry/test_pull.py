"""strata pull against a real registry: formats, compressions, indexes, platforms, reuse, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from store.store import Store
from tests.helpers import apply_oci_layers, dump_tree, snapshot, strata

from .conftest import RegistryInfo, TokenRegistry


def merged_tree(store: Store, name: str, dest: Path) -> str:
    rec = store.resolve(name)
    apply_oci_layers(list(reversed(store.layer_dirs(rec))), dest)
    return dump_tree(dest)


def expected(registry: RegistryInfo, name: str) -> str:
    assert registry.work is not None
    return (registry.work / "expected" / f"{name}.tree").read_text()


def out_lines(proc) -> list[str]:  # noqa: ANN001
    return proc.stdout.decode().splitlines()


def oci_blob_digests(registry: RegistryInfo, layout: str, tag: str) -> tuple[str, list[str]]:
    """(config digest, layer digests) of a tag in one of make-images.sh's OCI layouts."""
    assert registry.work is not None
    base = registry.work / "oci" / layout
    index = json.loads((base / "index.json").read_text())
    for m in index["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            manifest = json.loads((base / "blobs/sha256" / m["digest"].split(":")[1]).read_text())
            return manifest["config"]["digest"], [x["digest"] for x in manifest["layers"]]
    raise KeyError(tag)


def test_pull_tiny_prints_docker_lines_and_unpacks(registry: RegistryInfo, root: Path, tmp_path: Path) -> None:
    proc = strata(root, "pull", f"{registry.host}/tiny")
    digest = registry.digests["tiny:latest"]
    assert out_lines(proc) == [
        "latest: Pulling from tiny",
        "43b02861c89a: Pull complete",
        f"Digest: {digest}",
        f"Status: Downloaded newer image for {registry.host}/tiny:latest",
        f"{registry.host}/tiny:latest",
    ]
    store = Store(root)
    rec = store.resolve(f"{registry.host}/tiny")
    assert rec.repo_digests == [f"{registry.host}/tiny@{digest}"]
    assert store.blobs.has(rec.layers[0].digest) and store.blobs.has(rec.manifest)
    assert merged_tree(store, f"{registry.host}/tiny", tmp_path / "tree") == expected(registry, "tiny")


@pytest.mark.parametrize("tag", ["latest", "zstd", "uncompressed"])
def test_pull_layered_every_compression(registry: RegistryInfo, root: Path, tmp_path: Path, tag: str) -> None:
    name = f"{registry.host}/layered:{tag}"
    proc = strata(root, "pull", name)
    lines = out_lines(proc)
    assert lines[0] == f"{tag}: Pulling from layered"
    assert len([x for x in lines if x.endswith(": Pull complete")]) == 5
    assert lines[-3] == f"Digest: {registry.digests['layered:' + tag]}"
    store = Store(root)
    rec = store.resolve(name)
    config, layers = oci_blob_digests(registry, "layered", tag)
    assert rec.id == config and [x.digest for x in rec.layers] == layers
    assert all(store.blobs.has(d) for d in layers)
    assert merged_tree(store, name, tmp_path / "tree") == expected(registry, "layered")


def test_pull_by_digest_sets_no_tag(registry: RegistryInfo, root: Path) -> None:
    digest = registry.digests["layered:zstd"]
    proc = strata(root, "pull", f"{registry.host}/layered@{digest}")
    lines = out_lines(proc)
    assert lines[0] == f"{digest}: Pulling from layered"
    assert lines[-2:] == [
        f"Status: Downloaded newer image for {registry.host}/layered@{digest}",
        f"{registry.host}/layered@{digest}",
    ]
    store = Store(root)
    assert store.images.tags() == {}
    assert store.resolve(f"{registry.host}/layered@{digest}").manifest == digest
    again = strata(root, "pull", f"{registry.host}/layered@{digest}")
    assert f"Status: Image is up to date for {registry.host}/layered@{digest}" in out_lines(again)


def test_second_pull_is_up_to_date_and_fetches_no_blob(registry: RegistryInfo, root: Path) -> None:
    strata(root, "pull", f"{registry.host}/layered")
    mark = registry.log_mark()
    before = snapshot(root)
    proc = strata(root, "pull", f"{registry.host}/layered")
    lines = out_lines(proc)
    assert lines[1:6] == [
        f"{x}: Already exists" for x in ["7aff05d01dd1", "89d73a2a4328", "ae493c6dedf2", "b76f1fb6646f", "4f35a5ab078c"]
    ]
    assert lines[-2] == f"Status: Image is up to date for {registry.host}/layered:latest"
    requests = registry.requests_since(mark)
    assert any("/manifests/latest" in r for r in requests)
    assert not [r for r in requests if "/blobs/" in r]
    after = snapshot(root)
    assert set(after) == set(before)


def test_other_compression_of_known_layers_fetches_only_manifest_and_config(registry: RegistryInfo, root: Path) -> None:
    strata(root, "pull", f"{registry.host}/layered:latest")
    mark = registry.log_mark()
    proc = strata(root, "pull", f"{registry.host}/layered:zstd")
    assert sum(x.endswith(": Already exists") for x in out_lines(proc)) == 5
    assert "Status: Downloaded newer image" in proc.stdout.decode()
    assert not [r for r in registry.requests_since(mark) if "/blobs/" in r]  # same config blob: already stored


def test_interrupted_pull_resumes_without_refetching_finished_blobs(registry: RegistryInfo, root: Path) -> None:
    assert registry.work is not None
    _, layers = oci_blob_digests(registry, "layered", "latest")
    store = Store(root)
    for d in layers[:2]:  # what an interrupted pull leaves: finished blobs, no layers, no image
        store.blobs.put((registry.work / "oci/layered/blobs/sha256" / d.split(":")[1]).read_bytes(), d)
    mark = registry.log_mark()
    strata(root, "pull", f"{registry.host}/layered")
    fetched = [r for r in registry.requests_since(mark) if "/blobs/" in r]
    assert not [r for r in fetched if layers[0] in r or layers[1] in r]
    assert [r for r in fetched if layers[4] in r]
    assert len(store.resolve(f"{registry.host}/layered").layers) == 5


@pytest.mark.parametrize(
    "platform,arch",
    [(None, "amd64"), ("linux/amd64", "amd64"), ("linux/arm64/v8", "arm64"), ("linux/arm64", "arm64")],
)
@pytest.mark.parametrize("tag", ["latest", "docker"])
def test_pull_multiarch(
    registry: RegistryInfo, root: Path, tmp_path: Path, platform: str | None, arch: str, tag: str
) -> None:
    import platform as host_platform

    if platform is None and host_platform.machine() not in ("x86_64", "amd64"):
        pytest.skip("host platform test expects an amd64 machine")
    name = f"{registry.host}/multiarch:{tag}"
    args = ["pull", *(["--platform", platform] if platform else []), name]
    proc = strata(root, *args)
    assert out_lines(proc)[-3] == f"Digest: {registry.digests['multiarch:' + tag]}"
    store = Store(root)
    assert store.config(store.resolve(name))["architecture"] == arch
    assert merged_tree(store, name, tmp_path / "tree") == expected(registry, f"multiarch-{arch}")


def test_platform_not_in_index_lists_the_available_ones(registry: RegistryInfo, root: Path) -> None:
    for tag in ("latest", "docker"):
        proc = strata(root, "pull", "--platform", "linux/s390x", f"{registry.host}/multiarch:{tag}", check=False)
        assert proc.returncode != 0
        err = proc.stderr.decode().strip()
        assert err == (
            "Error: no matching manifest for linux/s390x in the manifest list entries "
            "(available: linux/amd64, linux/arm64/v8)"
        )
    assert Store(root).images.all() == []


def test_pull_quiet_prints_only_the_reference(registry: RegistryInfo, root: Path) -> None:
    proc = strata(root, "pull", "-q", f"{registry.host}/tiny:docker")
    assert out_lines(proc) == [f"{registry.host}/tiny:docker"]
    rec = Store(root).resolve(f"{registry.host}/tiny:docker")
    assert rec.manifest_media_type == "application/vnd.docker.distribution.manifest.v2+json"


def test_pull_all_tags(registry: RegistryInfo, root: Path) -> None:
    proc = strata(root, "pull", "-a", f"{registry.host}/tiny")
    lines = out_lines(proc)
    assert "docker: Pulling from tiny" in lines and "latest: Pulling from tiny" in lines
    assert lines[-2:] == [f"Status: Downloaded newer image for {registry.host}/tiny", f"{registry.host}/tiny"]
    assert sorted(Store(root).images.tags()) == [f"{registry.host}/tiny:docker", f"{registry.host}/tiny:latest"]
    bad = strata(root, "pull", "-a", f"{registry.host}/tiny:latest", check=False)
    assert bad.returncode != 0 and "tag can't be used with --all-tags" in bad.stderr.decode()


def test_nested_repository_name(registry: RegistryInfo, root: Path) -> None:
    proc = strata(root, "pull", f"{registry.host}/test/nested/tiny")
    assert out_lines(proc)[0] == "latest: Pulling from test/nested/tiny"


def test_foreign_layers_are_reported_not_skipped(token_registry: TokenRegistry, root: Path) -> None:
    import trio

    from store import mediatypes as mt
    from store.registry.auth import Credentials
    from store.registry.client import ClientOptions, Registry

    host = token_registry.host
    options = ClientOptions(credentials={host: Credentials("alice", "s3cret")})

    async def push_foreign() -> None:  # a registry allowing foreign URLs (`validation.manifests.urls`)
        async with Registry(host, options) as reg:
            data, _, _ = await reg.get_manifest("tiny", "docker")
            manifest = json.loads(data)
            assert await reg.mount_blob("foreign/tiny", manifest["config"]["digest"], "tiny") is None
            manifest["layers"][0]["mediaType"] = mt.DOCKER_FOREIGN
            manifest["layers"][0]["urls"] = ["https://example.invalid/layer.tar.gz"]
            await reg.put_manifest("foreign/tiny", "v1", json.dumps(manifest).encode(), mt.DOCKER_MANIFEST)

    trio.run(push_foreign)
    Store(root)
    proc = strata(root, "pull", f"{host}/foreign/tiny:v1", check=False)
    assert proc.returncode == 1
    err = proc.stderr.decode().strip()
    assert "is a foreign (non-distributable) layer" in err and mt.DOCKER_FOREIGN in err
    assert Store(root).images.all() == []


def test_platform_of_a_single_manifest_image_is_checked(registry: RegistryInfo, root: Path) -> None:
    proc = strata(root, "pull", "--platform", "linux/arm64", f"{registry.host}/multiarch:amd64", check=False)
    assert proc.returncode == 1
    assert proc.stderr.decode().strip() == (
        f"Error: image with reference {registry.host}/multiarch:amd64 was found but does not match the "
        "specified platform: wanted linux/arm64, actual: linux/amd64"
    )
    strata(root, "pull", "--platform", "linux/arm64", f"{registry.host}/multiarch:arm64")


def test_image_pull_by_tag_and_digest_as_the_image_guides_write_it(registry: RegistryInfo, root: Path) -> None:
    digest = registry.digests["tiny:latest"]
    by_tag = strata(root, "image", "pull", f"{registry.host}/tiny:latest")
    assert out_lines(by_tag)[-1] == f"{registry.host}/tiny:latest"
    by_digest = strata(root, "image", "pull", f"{registry.host}/tiny@{digest}")
    assert out_lines(by_digest)[-1] == f"{registry.host}/tiny@{digest}"
    assert Store(root).resolve(f"{registry.host}/tiny@{digest}").id == Store(root).resolve(f"{registry.host}/tiny").id
