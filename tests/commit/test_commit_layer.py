"""The committed layer directory, made alongside the tar rather than from it, equals the blob's content."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from store.commit import _LayerWriter
from store.errors import InvalidInput
from store.store import Store
from store.tarlayer import Unpacker
from tests.helpers import dump_tree, gnu_untar, strata


def listing(root: Path) -> str:
    """dump_tree plus every entry's mtime (the layer is built from metadata, not from a tar)."""
    times = []
    for dirpath, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            p = os.path.join(dirpath, name)
            times.append(f"{os.path.relpath(p, root)} {os.lstat(p).st_mtime_ns}")
    return "\n".join(dump_tree(root).splitlines()[1:] + sorted(times))  # not the root: never in the tar


def test_layer_directory_equals_the_blob_gnu_tar_extracts(root: Path, image_layouts: Path, mnt: Path, tmp_path: Path):
    strata(root, "load", "-i", str(image_layouts / "oci/layered"))
    strata(root, "tag", Store(root).images.all()[0].id, "layered:latest")
    strata(root, "create", "--name", "c", "layered:latest")
    strata(root, "mount", "c", str(mnt))
    (mnt / "etc/motd").write_text("changed\n")
    os.setxattr(mnt / "etc/motd", "user.note", b"kept")
    os.unlink(mnt / "data/keep.txt")  # a whiteout
    shutil.rmtree(mnt / "olddir")
    (mnt / "olddir").mkdir()  # an opaque directory
    (mnt / "olddir/new").write_bytes(os.urandom(3 << 20))  # more than one copy chunk
    os.link(mnt / "data/hardlink-a", mnt / "data/third-link")
    os.symlink("../etc/motd", mnt / "data/link")
    os.mkfifo(mnt / "data/fifo")
    os.mknod(mnt / "data/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.utime(mnt / "etc/motd", ns=(0, 1_234_567_891_000_000_000))
    strata(root, "umount", str(mnt))
    strata(root, "commit", "c", "out:1")

    s = Store(root)
    image = s.resolve("out:1")
    blob = s.blobs.path(image.layers[-1].digest)
    subprocess.run(["gzip", "-t", str(blob)], check=True)
    extracted = tmp_path / "extracted"
    gnu_untar(blob, extracted)
    layer = s.layers.path(s.chain(image)[-1])
    assert listing(layer) == listing(extracted)
    names = listing(layer)
    assert "etc/motd" in names and ".wh.keep.txt" in names and "olddir/.wh..wh..opq" in names
    assert os.stat(layer / "data/third-link").st_nlink > 1 and stat.S_ISCHR(os.lstat(layer / "data/null").st_mode)


def _file(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    return info


def test_layer_writer_hands_its_error_to_the_producer(tmp_path: Path) -> None:
    (tmp_path / "layer").mkdir()
    with pytest.raises(InvalidInput, match="outside the layer"):
        with _LayerWriter(Unpacker(tmp_path / "layer", [])) as layer:
            layer.add(_file("../escape", 3))
            layer.write(b"abc")
            for i in range(100):  # more than the queue holds: the producer must not block
                layer.add(_file(f"f{i}", 1 << 20))
                layer.write(bytes(1 << 20))


def test_layer_writer_stops_when_the_producer_fails_mid_file(tmp_path: Path) -> None:
    (tmp_path / "layer").mkdir()
    with pytest.raises(RuntimeError, match="source shrank"):
        with _LayerWriter(Unpacker(tmp_path / "layer", [])) as layer:
            layer.add(_file("big", 3 << 20))
            layer.write(bytes(2 << 20))
            raise RuntimeError("source shrank")
    assert not layer.thread.is_alive()
