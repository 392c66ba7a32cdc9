"""load / save / import against real archives made by skopeo and umoci, and read back by them."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from store import archive
from store.errors import InvalidInput
from store.layers import chain_ids
from store.store import Store
from tests.helpers import REPO, apply_oci_layers, dump_tree, gnu_untar, snapshot, strata


def skopeo(*args: str) -> str:
    return subprocess.run(["skopeo", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def layered_archive(image_layouts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`layered:latest` as a docker-archive written by skopeo (Docker's own format)."""
    out = tmp_path_factory.mktemp("arch") / "layered.tar"
    skopeo("copy", "-q", f"oci:{image_layouts}/oci/layered:latest", f"docker-archive:{out}:layered:latest")
    return out


def layer_blobs(layout: Path, tag: str) -> list[Path]:
    index = json.loads((layout / "index.json").read_text())
    desc = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag)
    manifest = json.loads((layout / "blobs/sha256" / desc["digest"][7:]).read_text())
    return [layout / "blobs/sha256" / x["digest"][7:] for x in manifest["layers"]]


def test_load_docker_archive_unpacks_each_layer_like_gnu_tar(
    root: Path, layered_archive: Path, image_layouts: Path, tmp_path: Path
) -> None:
    out = strata(root, "load", "-i", str(layered_archive)).stdout.decode()
    assert out.strip() == "Loaded image: layered:latest"
    store = Store(root)
    record = store.resolve("layered")
    blobs = layer_blobs(image_layouts / "oci/layered", "latest")
    assert len(record.layers) == len(blobs) == 5
    for i, (chain, blob) in enumerate(zip(store.chain(record), blobs, strict=True)):
        oracle = tmp_path / f"gnu{i}"
        gnu_untar(blob, oracle)
        # directories the tar only implies take their metadata from the layers below, by design
        listed = subprocess.run(["tar", "-taf", str(blob)], check=True, capture_output=True, text=True).stdout
        explicit = {n.removeprefix("./").rstrip("/") or "/" for n in listed.splitlines()} | {"/"}

        assert _explicit(dump_tree(store.layers.path(chain)), explicit) == _explicit(dump_tree(oracle), explicit), i + 1


def _explicit(dump: str, explicit: set[str]) -> list[str]:
    return [x for x in dump.splitlines() if not x.startswith("d ") or x.split(" ", 3)[3] in explicit]


def test_layers_stack_to_the_expected_tree(root: Path, image_layouts: Path, tmp_path: Path) -> None:
    strata(root, "load", "-i", str(image_layouts / "oci/layered"))
    store = Store(root)
    record = next(r for r in store.images.all())
    merged = tmp_path / "merged"
    apply_oci_layers([store.layers.path(c) for c in store.chain(record)], merged)
    assert dump_tree(merged) == (image_layouts / "expected/layered.tree").read_text()


@pytest.mark.parametrize("compression", ["gzip", "zstd", "stdin"])
def test_load_compressed_and_stdin_give_the_same_image(
    root: Path, layered_archive: Path, compression: str, tmp_path: Path
) -> None:
    data = layered_archive.read_bytes()
    if compression == "gzip":
        data = gzip.compress(data)
    elif compression == "zstd":
        data = zstandard.ZstdCompressor().compress(data)
    plain_root = tmp_path / "plain"
    strata(plain_root, "load", "-i", str(layered_archive))
    if compression == "stdin":
        strata(root, "load", input=data)
    else:
        f = tmp_path / f"a.tar.{compression}"
        f.write_bytes(data)
        strata(root, "load", "-i", str(f))
    a, b = Store(plain_root).resolve("layered"), Store(root).resolve("layered")
    assert a.id == b.id and [x.diff_id for x in a.layers] == [x.diff_id for x in b.layers]


def test_save_is_read_by_skopeo_and_round_trips(root: Path, layered_archive: Path, tmp_path: Path) -> None:
    strata(root, "load", "-i", str(layered_archive))
    original = Store(root).resolve("layered")
    saved = tmp_path / "saved.tar"
    strata(root, "save", "-o", str(saved), "layered")
    info = json.loads(skopeo("inspect", f"docker-archive:{saved}"))
    config = json.loads(Store(root).blobs.read(original.id))
    assert info["Layers"] == config["rootfs"]["diff_ids"]
    skopeo("copy", "-q", f"docker-archive:{saved}", f"oci:{tmp_path}/copied:x")
    other = tmp_path / "other"
    strata(other, "load", "-i", str(saved))
    back = Store(other).resolve("layered:latest")
    assert back.id == original.id
    assert [x.diff_id for x in back.layers] == [x.diff_id for x in original.layers]


def test_save_oci_layout_is_unpacked_by_umoci_to_the_expected_tree(
    root: Path, image_layouts: Path, tmp_path: Path
) -> None:
    strata(root, "load", "-i", str(image_layouts / "oci/layered"))
    strata(root, "tag", next(iter(Store(root).images.all())).id, "layered:v1")
    layout = tmp_path / "layout"
    strata(root, "save", "--format", "oci", "-o", str(layout), "layered:v1")
    skopeo("inspect", f"oci:{layout}:v1")
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:v1", str(bundle)], check=True, capture_output=True)
    assert dump_tree(bundle / "rootfs") == (image_layouts / "expected/layered.tree").read_text()


def test_truncated_archive_fails_and_leaves_store_as_it_was(root: Path, layered_archive: Path, tmp_path: Path) -> None:
    strata(root, "load", "-i", str(layered_archive))  # something already there
    before = snapshot(root)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(layered_archive.read_bytes()[:1_000_000])
    other = tmp_path / "other.tar"
    subprocess.run(
        ["skopeo", "copy", "-q", f"docker-archive:{layered_archive}", f"docker-archive:{other}:x:y"], check=True
    )
    for bad in (cut,):
        proc = strata(root, "load", "-i", str(bad), check=False)
        assert proc.returncode == 1
        err = proc.stderr.decode().strip()
        assert err.startswith("Error:") and "\n" not in err and "Traceback" not in err
    assert snapshot(root) == before


def test_corrupt_layer_is_rejected_and_nothing_kept(root: Path, layered_archive: Path, tmp_path: Path) -> None:
    with tarfile.open(layered_archive) as src:
        members = [(m, src.extractfile(m).read() if m.isreg() else None) for m in src.getmembers()]
    manifest = json.loads(next(d for m, d in members if m.name == "manifest.json"))
    victim = manifest[0]["Layers"][1]
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as dst:
        for m, data in members:
            if m.name == victim:
                data = data[:-2048] + b"\x01" * 2048  # same size, different bytes
            dst.addfile(m, io.BytesIO(data) if data is not None else None)
    strata(root, "images")  # (an empty store)
    before = snapshot(root)
    proc = strata(root, "load", "-i", str(bad), check=False)
    assert proc.returncode == 1 and "digest mismatch" in proc.stderr.decode()
    s = Store(root)
    assert s.images.all() == [] and s.images.tags() == {}
    # the good layers below the bad one go too: the store is as it was
    assert snapshot(root) == before
    assert list(s.blobs.tmp.iterdir()) == []


def _tar_with(entries: list[tarfile.TarInfo]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for e in entries:
            t.addfile(e, io.BytesIO(b"x" * e.size) if e.isreg() else None)
    return buf.getvalue()


def _entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 0) -> tarfile.TarInfo:
    e = tarfile.TarInfo(name)
    e.type, e.linkname, e.size = kind, link, size
    return e


@pytest.mark.parametrize(
    "entries",
    [
        [_entry("../escape", size=1)],
        [_entry("/etc/abs", size=1)],
        [_entry("a/../../b", size=1)],
        [_entry("link", tarfile.SYMTYPE, "/etc"), _entry("link/passwd", size=1)],
        [_entry("up", tarfile.SYMTYPE, "../../.."), _entry("ok", size=1)],
        [_entry("hard", tarfile.LNKTYPE, "../../etc/passwd")],
        [_entry("hard", tarfile.LNKTYPE, "missing")],
    ],
    ids=["dotdot", "absolute", "inner-dotdot", "through-symlink", "symlink-out", "hardlink-out", "hardlink-missing"],
)
def test_import_refuses_entries_outside_the_layer(root: Path, tmp_path: Path, entries: list) -> None:
    bad = tmp_path / "evil.tar"
    bad.write_bytes(_tar_with(entries))
    proc = strata(root, "import", str(bad), "evil:1", check=False)
    assert proc.returncode == 1, proc.stdout
    assert "layer" in proc.stderr.decode() and "Traceback" not in proc.stderr.decode()
    s = Store(root)
    assert s.images.all() == [] and s.layers.all() == [] and s.blobs.all() == []
    assert not (tmp_path / "etc").exists() and not (tmp_path.parent / "escape").exists()


def test_import_makes_a_one_layer_image_with_changes(root: Path, tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc/hello").write_text("hi\n")
    tarball = tmp_path / "rootfs.tar.gz"
    subprocess.run(["tar", "-czf", str(tarball), "-C", str(rootfs), "."], check=True)
    out = strata(root, "import", "-c", "ENV A=1", "-c", 'CMD ["/bin/sh"]', "-c", "EXPOSE 80", str(tarball), "mine:v1")
    image_id = out.stdout.decode().strip()
    info = json.loads(strata(root, "inspect", "mine:v1").stdout)[0]
    assert info["Id"] == image_id
    assert info["Config"]["Env"] == ["A=1"] and info["Config"]["Cmd"] == ["/bin/sh"]
    assert info["Config"]["ExposedPorts"] == {"80/tcp": {}}
    diff_id = info["RootFS"]["Layers"][0]
    assert diff_id == "sha256:" + __import__("hashlib").sha256(gzip.decompress(tarball.read_bytes())).hexdigest()
    history = strata(root, "history", "--format", "{{.Comment}}", "mine:v1").stdout.decode()
    assert history.strip() == f"Imported from {tarball}"
    s = Store(root)
    assert (s.layers.path(chain_ids([diff_id])[-1]) / "etc/hello").read_text() == "hi\n"
    proc = strata(root, "import", "-c", "RUN rm -rf /", str(tarball), check=False)
    assert proc.returncode == 1 and "not a valid change command" in proc.stderr.decode()


def test_load_rejects_a_file_that_is_no_archive(root: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a tar at all" * 100)
    proc = strata(root, "load", "-i", str(junk), check=False)
    assert proc.returncode == 1 and proc.stderr.decode().count("\n") == 1
    with pytest.raises(InvalidInput):
        archive.load(Store(tmp_path / "s"), junk)


def test_load_a_tar_of_an_oci_layout_with_a_nested_index(root: Path, image_layouts: Path, tmp_path: Path) -> None:
    layout_tar = tmp_path / "multiarch.tar"
    subprocess.run(["tar", "-cf", str(layout_tar), "-C", str(image_layouts / "oci/multiarch"), "."], check=True)
    out = strata(root, "load", "-i", str(layout_tar)).stdout.decode().splitlines()
    s = Store(root)
    archs = sorted(json.loads(s.blobs.read(r.id))["architecture"] for r in s.images.all())
    # amd64 and arm64 by their own entries; the index entry resolves to the host's (amd64 here)
    assert archs == ["amd64", "arm64"] and len(out) == 3
    index = json.loads((image_layouts / "oci/multiarch/index.json").read_text())
    by_tag = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"] for m in index["manifests"]}
    assert {r.manifest for r in s.images.all()} == {by_tag["amd64"], by_tag["arm64"]}


def test_each_tag_keeps_the_manifest_it_came_with(root: Path, image_layouts: Path, tmp_path: Path) -> None:
    """layered:latest (gzip) and layered:zstd share a config: one image, two manifests, each kept."""
    layout = image_layouts / "oci/layered"
    index = json.loads((layout / "index.json").read_text())
    by_tag = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"] for m in index["manifests"]}
    for tag in ("latest", "zstd"):
        one = tmp_path / tag
        skopeo("copy", "-q", "--preserve-digests", f"oci:{layout}:{tag}", f"oci:{one}:{tag}")
        one_index = json.loads((one / "index.json").read_text())
        one_index["manifests"][0]["annotations"]["io.containerd.image.name"] = f"example.com/layered:{tag}"
        (one / "index.json").write_text(json.dumps(one_index))
        strata(root, "load", "-i", str(one))
    assert len(Store(root).images.all()) == 1
    for tag in ("latest", "zstd"):
        out = tmp_path / f"out-{tag}"
        strata(root, "save", "--format", "oci", "-o", str(out), f"example.com/layered:{tag}")
        saved = json.loads((out / "index.json").read_text())["manifests"][0]["digest"]
        assert saved == by_tag[tag], tag


def test_a_layer_cannot_carry_the_overlays_own_xattrs(root: Path, tmp_path: Path) -> None:
    """A tar entry's trusted.overlay.redirect (or opaque) would make a directory show another's
    contents, or hide its own: whiteouts come as `.wh.` entries, so these are dropped."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        d = tarfile.TarInfo("moved")
        d.type = tarfile.DIRTYPE
        d.mode = 0o755
        d.pax_headers = {"SCHILY.xattr.trusted.overlay.redirect": "/etc", "SCHILY.xattr.user.kept": "yes"}
        t.addfile(d)
    src = tmp_path / "x.tar"
    src.write_bytes(buf.getvalue())
    strata(root, "import", str(src), "x:1")
    s = Store(root)
    moved = s.layers.path(s.layers.all()[0].chain_id) / "moved"
    assert os.listxattr(moved) == ["user.kept"]


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_a_plain_tar_file_is_read_in_place(root: Path, layered_archive: Path, tmp_path: Path) -> None:
    """No copy of the archive in tmp/ (which took ~3x its size on disk) when it can be read in place."""
    exe = str(REPO / ".venv" / "bin" / "strata")
    log = tmp_path / "trace"
    cmd = ["strace", "-f", "-qq", "-e", "trace=openat,mkdir", "-o", str(log), exe, "--root", str(root)]
    subprocess.run([*cmd, "load", "-i", str(layered_archive)], check=True, capture_output=True, timeout=300)
    assert "O_TMPFILE" not in log.read_text() and "/load-" not in log.read_text()
    subprocess.run([*cmd, "rmi", "layered"], check=True, capture_output=True, timeout=300)
    subprocess.run([*cmd, "load"], input=layered_archive.read_bytes(), check=True, capture_output=True, timeout=300)
    assert "/load-" in log.read_text()  # (a pipe cannot seek back: its members are kept as they come)


def _random_layers_archive(path: Path, n: int, size: int) -> None:
    """A gzipped docker-save archive of *n* layers, each one file of *size* random bytes."""
    layers, diff_ids = [], []
    for i in range(n):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            info = tarfile.TarInfo(f"f{i}")
            info.size = size
            t.addfile(info, io.BytesIO(os.urandom(size)))
        layers.append(buf.getvalue())
        diff_ids.append("sha256:" + hashlib.sha256(layers[-1]).hexdigest())
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}})
    config_name = hashlib.sha256(config.encode()).hexdigest() + ".json"
    names = [f"{d[7:]}/layer.tar" for d in diff_ids]
    manifest = json.dumps([{"Config": config_name, "RepoTags": ["big:1"], "Layers": names}])
    members = [*zip(names, layers, strict=True), (config_name, config.encode()), ("manifest.json", manifest.encode())]
    with gzip.open(path, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w|") as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def test_a_compressed_archive_loads_where_a_second_copy_of_it_would_not_fit(tmp_path: Path) -> None:
    """A compressed (or piped) archive is read once; each layer's member is freed once that layer is
    stored.  On a disk of 2.5x the archive's size it loads, where a spool of the whole archive beside
    the blobs and layer directories it becomes (2x) could not fit."""
    archive_path = tmp_path / "big.tar.gz"
    _random_layers_archive(archive_path, 8, 2 << 20)
    size = archive_path.stat().st_size
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size * 5 // 2}", "tmpfs", str(disk)], check=True, timeout=30)
    try:
        store = disk / "store"
        strata(store, "images")
        before = snapshot(store)
        ballast = disk / "ballast"  # a disk too full for the load: a one-line error, and nothing kept
        ballast.write_bytes(b"\0" * (size * 5 // 4))
        proc = strata(store, "load", "-i", str(archive_path), check=False)
        assert proc.returncode == 1
        assert proc.stderr.decode().startswith("Error: ") and proc.stderr.decode().count("\n") == 1, proc.stderr
        assert "No space left on device" in proc.stderr.decode()
        assert snapshot(store) == before
        ballast.unlink()
        strata(store, "load", "-i", str(archive_path))
        assert len(Store(store).resolve("big:1").layers) == 8
        assert not list((store / "tmp").glob("load-*"))
    finally:
        subprocess.run(["umount", str(disk)], check=True, timeout=30)
