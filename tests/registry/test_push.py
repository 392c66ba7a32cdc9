"""strata push against a real registry, checked with skopeo; and skopeo-pushed images pulled back."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

from store import mediatypes as mt
from store import reference
from store.layers import chain_ids
from store.registry import push as push_mod
from store.registry.client import ClientOptions
from store.store import Store
from tests.helpers import strata

from .conftest import RegistryInfo


def skopeo_inspect(ref: str) -> bytes:
    return subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"], check=True, capture_output=True
    ).stdout


def skopeo_copy_to_oci(ref: str, dest: Path) -> dict:
    """Copy with skopeo into an OCI layout; return the manifest skopeo wrote (same digests kept)."""
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--preserve-digests",
            f"docker://{ref}",
            f"oci:{dest}:x",
        ],
        check=True,
        capture_output=True,
    )
    index = json.loads((dest / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    return {"digest": digest, **json.loads((dest / "blobs/sha256" / digest.split(":")[1]).read_text())}


def make_image(store: Store, name: str, big: int = 3 << 20) -> str:
    """A brand-new image no registry has seen: random content, one big layer; returns its ID."""
    refs = []
    parent = None
    for i, size in enumerate([big, 1000]):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo(f"layer{i}/random.bin")
            info.size = size
            tar.addfile(info, io.BytesIO(os.urandom(size)))
        blob = gzip.compress(buf.getvalue(), compresslevel=1)
        refs.append(store.ingest_layer(io.BytesIO(blob), parent, None, mt.OCI_LAYER_GZIP))
        parent = chain_ids([x.diff_id for x in refs])[-1]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [x.diff_id for x in refs]},
    }
    return store.add_image(json.dumps(config).encode(), refs, tags=[reference.parse(name)]).id


def test_push_new_image_then_skopeo_and_strata_see_identical_digests(
    registry: RegistryInfo, root: Path, tmp_path: Path
) -> None:
    name = f"{registry.host}/fresh/app:v1"
    store = Store(root)
    image_id = make_image(store, name)
    rec = store.resolve(name)
    manifest = store.manifest(rec)
    proc = strata(root, "push", name)
    lines = proc.stdout.decode().splitlines()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    assert lines[0] == f"The push refers to repository [{name.rsplit(':', 1)[0]}]"
    assert sorted(lines[1:3]) == sorted(f"{x.digest[7:19]}: Pushed" for x in rec.layers)
    assert lines[3] == f"v1: digest: {digest} size: {len(manifest)}"
    assert skopeo_inspect(name) == manifest
    copied = skopeo_copy_to_oci(name, tmp_path / "oci")
    assert copied["digest"] == digest
    assert copied["config"]["digest"] == image_id
    assert [x["digest"] for x in copied["layers"]] == [x.digest for x in rec.layers]
    assert Store(root).resolve(name).repo_digests == [f"{registry.host}/fresh/app@{digest}"]
    again = strata(root, "push", name).stdout.decode().splitlines()
    assert sorted(again[1:3]) == sorted(f"{x.digest[7:19]}: Layer already exists" for x in rec.layers)
    other = tmp_path / "other"
    strata(other, "pull", name)
    back = Store(other).resolve(name)
    assert back.id == image_id and back.manifest == digest and back.layers == rec.layers


def test_chunked_upload_of_big_blobs(registry: RegistryInfo, root: Path, tmp_path: Path) -> None:
    name = f"{registry.host}/fresh/chunked:v1"
    store = Store(root)
    make_image(store, name, big=5 << 20)
    mark = registry.log_mark()
    result = push_mod.push(store, name, options=ClientOptions(), chunk_size=1 << 20)
    assert result.pushed == 3
    patches = [r for r in registry.requests_since(mark) if r.startswith("PATCH ")]
    assert len(patches) >= 5
    copied = skopeo_copy_to_oci(name, tmp_path / "oci")
    assert copied["digest"] == result.digest


def test_push_mounts_blobs_known_in_another_repository(registry: RegistryInfo, root: Path) -> None:
    strata(root, "pull", f"{registry.host}/tiny")
    target = f"{registry.host}/mounted/tiny:v2"
    strata(root, "tag", f"{registry.host}/tiny", target)
    mark = registry.log_mark()
    lines = strata(root, "push", target).stdout.decode().splitlines()
    digest = registry.digests["tiny:latest"]
    assert lines[1] == "43b02861c89a: Mounted from tiny"
    assert lines[-1].startswith(f"v2: digest: {digest} size: ")
    assert [r for r in registry.requests_since(mark) if "mount=" in r]
    assert not [r for r in registry.requests_since(mark) if r.startswith("PUT") and "/blobs/" in r]
    assert skopeo_inspect(target) == skopeo_inspect(f"{registry.host}/tiny")
    assert f"{registry.host}/mounted/tiny@{digest}" in Store(root).resolve(target).repo_digests


def test_skopeo_pushed_image_pulls_with_same_digests(registry: RegistryInfo, root: Path) -> None:
    assert registry.work is not None
    dest = f"{registry.host}/skopeo/layered:copy"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--preserve-digests",
            f"oci:{registry.work / 'oci/layered'}:zstd",
            f"docker://{dest}",
        ],
        check=True,
        capture_output=True,
    )
    strata(root, "pull", dest)
    rec = Store(root).resolve(dest)
    assert rec.manifest == registry.digests["layered:zstd"]
    skopeo_manifest = json.loads(skopeo_inspect(dest))
    assert [x.digest for x in rec.layers] == [x["digest"] for x in skopeo_manifest["layers"]]
    assert Store(root).manifest(rec) == skopeo_inspect(dest)


def test_manifest_inspect_prints_manifest_and_index(registry: RegistryInfo, root: Path) -> None:
    proc = strata(root, "manifest", "inspect", f"{registry.host}/multiarch")
    index = json.loads(proc.stdout)
    assert index["mediaType"] == mt.OCI_INDEX and len(index["manifests"]) == 2
    raw = strata(root, "manifest", "inspect", "--raw", f"{registry.host}/layered:zstd").stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == registry.digests["layered:zstd"]
    bad = strata(root, "manifest", "inspect", f"{registry.host}/tiny:nope", check=False)
    assert bad.returncode == 1 and "manifest unknown" in bad.stderr.decode()


def test_search_uses_the_catalog(registry: RegistryInfo, root: Path) -> None:
    out = strata(root, "search", f"{registry.host}/tin").stdout.decode().splitlines()
    assert out[0].split() == ["NAME", "DESCRIPTION", "STARS", "OFFICIAL"]
    names = [line.split()[0] for line in out[1:]]
    assert f"{registry.host}/tiny" in names and f"{registry.host}/test/nested/tiny" in names
    assert all("tin" in n.split("/", 1)[1] for n in names)
    limited = strata(root, "search", "--limit", "1", f"{registry.host}/").stdout.decode().splitlines()
    assert len(limited) == 2
    bad = strata(root, "search", "--filter", "bogus=1", f"{registry.host}/x", check=False)
    assert bad.returncode == 1 and "invalid filter" in bad.stderr.decode()


def test_pulling_a_moved_tag_leaves_the_old_image_dangling(registry: RegistryInfo, root: Path, tmp_path: Path) -> None:
    pusher = tmp_path / "pusher"
    moving = f"{registry.host}/moving/app:stable"
    strata(pusher, "pull", f"{registry.host}/tiny")
    strata(pusher, "tag", f"{registry.host}/tiny", moving)
    strata(pusher, "push", moving)
    strata(root, "pull", moving)
    old = Store(root).resolve(moving).id
    strata(pusher, "pull", f"{registry.host}/multiarch:amd64")
    strata(pusher, "tag", f"{registry.host}/multiarch:amd64", moving)
    strata(pusher, "push", moving)
    out = strata(root, "pull", moving).stdout.decode()
    assert f"Status: Downloaded newer image for {moving}" in out
    store = Store(root)
    assert store.resolve(moving).id != old
    assert store.images.has(old) and store.tags_of(old) == []


def test_push_of_a_layer_stored_only_in_another_compression_fails_cleanly(
    registry: RegistryInfo, auth_registry: RegistryInfo, root: Path
) -> None:
    strata(root, "pull", f"{registry.host}/layered:latest")
    strata(root, "pull", f"{registry.host}/layered:zstd")  # same layers: the zstd blobs are never fetched
    other = f"{registry.host}/elsewhere/layered:zstd"
    strata(root, "tag", f"{registry.host}/layered:zstd", other)
    proc = strata(root, "push", other)  # same registry: every blob mounts from `layered`
    assert proc.stdout.decode().count("Mounted from layered") == 5
    target = f"{auth_registry.host}/isolated/layered:zstd"  # another registry: nothing to mount from
    strata(root, "tag", f"{registry.host}/layered:zstd", target)
    strata(root, "login", "-u", "alice", "--password-stdin", auth_registry.host, input=b"s3cret")
    proc = strata(root, "push", target, check=False)
    err = proc.stderr.decode().strip()
    assert proc.returncode == 1 and len(err.splitlines()) == 1
    assert "is not in the store" in err and "pull the image again" in err
