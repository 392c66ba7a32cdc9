"""The committed layer directory, made alongside the tar rather than from it, equals the blob's content."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

from store.store import Store
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
