"""Two strata processes at once, and a process killed mid-write: the store stays consistent."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

from store.store import Store
from tests.helpers import REPO, dump_tree, strata


def _big_tarball(tmp_path: Path) -> Path:
    src = tmp_path / "big"
    src.mkdir()
    with open(src / "random.bin", "wb") as f:
        for _ in range(24):
            f.write(os.urandom(4 << 20))
    out = tmp_path / "big.tar"
    subprocess.run(["tar", "-cf", str(out), "-C", str(src), "."], check=True)
    return out


def test_concurrent_loads_of_the_same_image(root: Path, image_layouts: Path, tmp_path: Path) -> None:
    cmd = [str(REPO / ".venv/bin/strata"), "--root", str(root), "load", "-i", str(image_layouts / "oci/layered")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    s = Store(root)
    (record,) = s.images.all()
    assert len(s.layers.all()) == len(record.layers)
    single = tmp_path / "single"
    strata(single, "load", "-i", str(image_layouts / "oci/layered"))
    t = Store(single)
    for a, b in zip(s.chain(record), t.chain(t.images.all()[0]), strict=True):
        assert dump_tree(s.layers.path(a)) == dump_tree(t.layers.path(b))


def test_killed_import_leaves_nothing_visible(root: Path, tmp_path: Path) -> None:
    tarball = _big_tarball(tmp_path)
    strata(root, "images")  # the store exists
    for delay in (0.3, 0.5):
        proc = subprocess.Popen([str(REPO / ".venv/bin/strata"), "--root", str(root), "import", str(tarball), "big:1"])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        s = Store(root)
        if s.images.all():  # it finished before the kill: then it is complete
            (record,) = s.images.all()
            assert (s.layers.path(s.chain(record)[0]) / "random.bin").stat().st_size == 96 << 20
            return
        assert s.layers.all() == [] and s.blobs.all() == []
        assert strata(root, "images", "-q").stdout == b""
    out = strata(root, "image", "prune", "-f").stdout.decode()
    assert out.strip() == "Total reclaimed space: 0B"
    assert list(Store(root).blobs.tmp.iterdir()) == []  # leftovers of the dead writers are gone
    strata(root, "import", str(tarball), "big:1")
    s = Store(root)
    assert (s.layers.path(s.chain(s.resolve("big:1"))[0]) / "random.bin").stat().st_size == 96 << 20


def test_rmi_in_another_process_spares_layers_still_being_recorded(root: Path, image_layouts: Path) -> None:
    strata(root, "load", "-i", str(image_layouts / "oci/tiny"))
    tiny = Store(root).images.all()[0].id
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo("hello")
        info.size = 2
        t.addfile(info, io.BytesIO(b"hi"))
    loader = Store(root)  # an ingest in progress: layer stored, image not recorded yet
    layer = loader.ingest_layer(io.BytesIO(buf.getvalue()), None, None, "application/vnd.oci.image.layer.v1.tar")
    proc = strata(root, "rmi", tiny)
    assert f"Deleted: {tiny}" in proc.stdout.decode()
    assert "Note: unused layers and blobs kept: another strata process is adding" in proc.stderr.decode()
    assert loader.layers.has(layer.diff_id) and loader.blobs.has(layer.digest)
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]}}
    record = loader.add_image(json.dumps(config).encode(), [layer])
    del loader
    assert Store(root).images.has(record.id)
    strata(root, "rmi", record.id)  # nobody ingesting now: everything goes
    assert Store(root).layers.all() == [] and Store(root).blobs.all() == []


def _many_layer_archive(path: Path, n: int) -> None:
    """A docker-save archive of one image whose n layers are the same empty tar (as issue #15's)."""
    import hashlib

    empty = io.BytesIO()
    with tarfile.open(fileobj=empty, mode="w"):
        pass
    layer = empty.getvalue()
    d = "sha256:" + hashlib.sha256(layer).hexdigest()
    rootfs = {"type": "layers", "diff_ids": [d] * n}
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {}, "rootfs": rootfs}).encode()
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    manifest = [{"Config": cfg_name, "RepoTags": [f"many:{n}"], "Layers": [f"{d[7:]}/layer.tar"] * n}]
    with tarfile.open(path, "w") as out:
        for name, data in (
            (f"{d[7:]}/layer.tar", layer),
            (cfg_name, cfg),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))


def test_an_image_of_a_thousand_layers_loads_checks_and_goes(root: Path, tmp_path: Path) -> None:
    """Each of n layers is its own chain (the same diffID over a different parent); none may cost
    a walk of those below it (that made 1,000 layers take a minute, 10,000 never finish)."""
    archive = tmp_path / "many.tar"
    _many_layer_archive(archive, 1000)
    strata(root, "load", "-i", str(archive))
    inspect = json.loads(strata(root, "inspect", "many:1000").stdout)[0]
    assert len(inspect["RootFS"]["Layers"]) == 1000 and len(Store(root).layers.all()) == 1000
    assert strata(root, "system", "check").stdout.decode().startswith("The store is consistent: 1 image, 1000 layers")
    strata(root, "rmi", "many:1000")
    assert Store(root).layers.all() == [] and Store(root).images.all() == []


def test_an_interrupted_change_is_finished_once_never_again(root: Path, image_layouts: Path) -> None:
    """A killed command's intent is completed by the next command; while another ingest keeps the
    collection waiting, the intent stays, but must not redo its change over a later one."""
    strata(root, "load", "-i", str(image_layouts / "oci/tiny"))
    a = Store(root).images.all()[0].id
    strata(root, "load", "-i", str(image_layouts / "oci/layered"))
    b = next(r.id for r in Store(root).images.all() if r.id != a)
    dead = Store(root).blobs.tmp / "intent-999999999-add-killed.json"  # (a pid that never runs)
    dead.write_text(json.dumps({"kind": "add", "data": [a, ["docker.io/library/x:1"]]}))
    holder = Store(root)
    holder.hold_ingest_lease()  # another ingest: the collection waits
    strata(root, "tag", b, "y:1")  # finishes the killed add: x:1 -> a
    assert Store(root).images.tags()["docker.io/library/x:1"] == a
    strata(root, "tag", b, "x:1")
    strata(root, "tag", b, "z:1")  # the intent is still there (no collection yet): it must not re-tag
    assert Store(root).images.tags()["docker.io/library/x:1"] == b
    del holder
