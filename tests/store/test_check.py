"""`strata system check` finds each kind of damage, `--repair` removes it and says so, and the store
then works again (as `git fsck`, `podman system check --repair`)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from store import digest as dg
from store.store import Store
from tests.helpers import strata
from unionfs.index import load_or_build


@pytest.fixture
def store(root: Path, image_layouts: Path) -> Path:
    strata(root, "load", "-i", str(image_layouts / "oci" / "layered"))
    strata(root, "tag", Store(root).images.all()[0].id, "layered:latest")
    strata(root, "create", "--name", "c1", "layered:latest")
    s = Store(root)
    img = s.images.all()[0]
    load_or_build(s.layer_dirs(img), cache=s.index_cache(img))  # (what a mount keeps)
    return root


def _layer_blob(s: Store) -> Path:
    return s.blobs.path(s.images.all()[0].layers[-1].digest)


def damage_blob(s: Store) -> None:
    p = _layer_blob(s)
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


def lose_layer(s: Store) -> None:
    top = s.chain(s.images.all()[0])[-1]
    shutil.rmtree(s.layers.path(top).parent)


def dangling_tag(s: Store) -> None:
    tags = s.images.tags()
    tags["docker.io/library/ghost:1"] = dg.of_bytes(b"no such image")
    s.images.tags_file.write_text(json.dumps(tags))


def orphan_layer(s: Store) -> None:
    layer = s.layers.all()[0]
    home = s.layers.path(layer.chain_id).parent
    fake = dg.of_bytes(b"orphan")
    subprocess.run(["cp", "-a", str(home), str(s.layers.dir / dg.hex_of(fake))], check=True, timeout=60)
    rec = json.loads((home / "layer.json").read_text())
    rec.update(chain_id=fake, diff_id=fake, parent=None)
    (s.layers.dir / dg.hex_of(fake) / "layer.json").write_text(json.dumps(rec))


def leftover_temp(s: Store) -> None:
    (s.blobs.tmp / "blob-999999999-leftover").write_bytes(b"half a blob")


def damage_index(s: Store) -> None:
    p = s.index_cache(s.images.all()[0])
    data = bytearray(p.read_bytes())
    data[64:] = bytes(len(data) - 64)
    p.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (damage_blob, "is damaged (its content hashes to"),
        (lose_layer, "is missing sha256:"),
        (dangling_tag, "tag docker.io/library/ghost:1 names a missing image"),
        (orphan_layer, "is used by no image"),
        (damage_index, "is damaged"),
    ],
    ids=["blob", "layer", "tag", "orphan", "index"],
)
def test_check_finds_and_repair_fixes(store: Path, image_layouts: Path, damage: Callable, said: str) -> None:
    first = strata(store, "system", "check")
    assert first.stdout.decode().splitlines()[-1].startswith("The store is consistent: 1 image, ")
    damage(Store(store))
    found = strata(store, "system", "check", check=False)
    out = found.stdout.decode()
    assert found.returncode == 1 and said in out, out
    assert out.splitlines()[-1].endswith("run with --repair") and not found.stderr
    fixed = strata(store, "system", "check", "--repair").stdout.decode()
    assert "removed" in fixed and fixed.splitlines()[-1].startswith("Repaired "), fixed
    assert "consistent" in strata(store, "system", "check").stdout.decode()
    # what was lost comes back with the image
    strata(store, "load", "-i", str(image_layouts / "oci" / "layered"))
    strata(store, "tag", Store(store).images.all()[0].id, "layered:latest")
    assert b"layered" in strata(store, "images").stdout
    assert "consistent" in strata(store, "system", "check").stdout.decode()


def test_the_lock_removes_leftovers_of_dead_writers_and_check_says_so(store: Path) -> None:
    leftover_temp(Store(store))
    out = strata(store, "system", "check").stdout.decode().splitlines()
    assert out[0] == "recovered: removed leftover temporary file tmp/blob-999999999-leftover"
    assert out[-1].startswith("The store is consistent")
    assert not (Store(store).blobs.tmp / "blob-999999999-leftover").exists()


def test_what_another_process_is_adding_is_neither_reported_nor_repaired(store: Path) -> None:
    orphan_layer(Store(store))  # (as a layer another process has just unpacked looks)
    other = Store(store)
    other.hold_ingest_lease()
    out = strata(store, "system", "check", "--repair").stdout.decode()
    assert "another strata process is adding to the store" in out and "removed" not in out, out
    assert len(Store(store).layers.all()) == 6
    del other
