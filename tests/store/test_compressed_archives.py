"""`load` and `import` of archives compressed by the real gzip, bzip2, xz and zstd tools, from a file
and from stdin, as Docker's image guides use them; bzip2 and xz layers are stored as plain tar."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from store.compression import detect
from store.store import Store
from tests.helpers import REPO, strata

from .test_archives import skopeo

TOOLS = {"gzip": ["gzip", "-c"], "bzip2": ["bzip2", "-c"], "xz": ["xz", "-c", "-T1"], "zstd": ["zstd", "-q", "-c"]}


@pytest.fixture(scope="module")
def layered_archive(image_layouts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("arch") / "layered.tar"
    skopeo("copy", "-q", f"oci:{image_layouts}/oci/layered:latest", f"docker-archive:{out}:layered:latest")
    return out


def _compress(tool: str, src: Path, dst: Path) -> Path:
    with open(src, "rb") as i, open(dst, "wb") as o:
        subprocess.run(TOOLS[tool], stdin=i, stdout=o, check=True, timeout=120)
    return dst


@pytest.mark.parametrize("tool", sorted(TOOLS))
@pytest.mark.parametrize("via", ["file", "stdin"])
def test_load_of_every_compression_gives_the_plain_archives_image(
    root: Path, layered_archive: Path, tmp_path: Path, tool: str, via: str
) -> None:
    plain = tmp_path / "plain"
    strata(plain, "load", "-i", str(layered_archive))
    packed = _compress(tool, layered_archive, tmp_path / f"img.tar.{tool}")
    if via == "file":
        out = strata(root, "load", "-i", str(packed))
    else:
        out = strata(root, "load", input=packed.read_bytes())
    assert "Loaded image: layered:latest" in out.stdout.decode()
    want, got = Store(plain).resolve("layered"), Store(root).resolve("layered")
    assert got.id == want.id and [x.diff_id for x in got.layers] == [x.diff_id for x in want.layers]


def test_the_tutorials_save_xz_pipeline_round_trips(root: Path, layered_archive: Path, tmp_path: Path) -> None:
    strata(root, "load", "-i", str(layered_archive))
    cli, other, third, packed = REPO / ".venv/bin/strata", tmp_path / "other", tmp_path / "third", tmp_path / "i.tar.xz"
    pipeline = (
        f"{cli} --root {root} save layered | xz -T1 | xz -dc | {cli} --root {other} load"
        f" && {cli} --root {root} save layered | xz -T1 > {packed} && {cli} --root {third} load < {packed}"
    )
    r = subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    original = Store(root).resolve("layered").id
    assert Store(other).resolve("layered").id == original == Store(third).resolve("layered").id


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_import_of_a_compressed_rootfs_stores_a_layer_images_can_name(root: Path, tmp_path: Path, tool: str) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc/hello").write_text("hi\n")
    tar = tmp_path / "rootfs.tar"
    subprocess.run(["tar", "-cf", str(tar), "-C", str(rootfs), "."], check=True, timeout=60)
    strata(root, "import", str(_compress(tool, tar, tmp_path / f"rootfs.tar.{tool}")), "mine:v1")
    s = Store(root)
    (layer,) = s.resolve("mine:v1").layers
    assert layer.diff_id == "sha256:" + hashlib.sha256(tar.read_bytes()).hexdigest()
    blob_kind = detect(s.blobs.read(layer.digest)[:6])
    # gzip and zstd blobs kept as they came; bzip2 and xz have no OCI media type: stored as plain tar
    assert blob_kind == (tool if tool in ("gzip", "zstd") else "none")
    assert layer.media_type.endswith({"gzip": "tar+gzip", "zstd": "tar+zstd"}.get(tool, "tar"))
