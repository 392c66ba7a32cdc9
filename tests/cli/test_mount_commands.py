"""create / ps / mount / umount / rm as a user runs them, with real FUSE mounts."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from store.store import Store
from tests.helpers import strata
from unionfs import tablepack
from unionfs.index import TABLE_DIR


@pytest.fixture
def image(root: Path, image_layouts: Path) -> str:
    strata(root, "load", "-i", str(image_layouts / "oci/layered"))
    strata(root, "tag", Store(root).images.all()[0].id, "layered:latest")
    return "layered:latest"


def is_mounted(mp: Path) -> bool:
    return any(line.split()[1] == str(mp) for line in Path("/proc/mounts").read_text().splitlines())


def test_image_mounts_read_only(root: Path, image: str, mnt: Path) -> None:
    strata(root, "mount", image, str(mnt))
    assert is_mounted(mnt)
    assert (mnt / "etc/hostname").read_text() == "layered-v5\n"
    with pytest.raises(OSError) as e:
        (mnt / "etc/new").write_text("x")
    assert e.value.errno == errno.EROFS
    strata(root, "umount", str(mnt))
    assert not is_mounted(mnt)


def test_layer_tables_are_kept_and_pruned_with_their_layers(root: Path, image: str, mnt: Path) -> None:
    """`load` keeps each new layer's table beside the index caches, the mount merges them (and lists
    what the layers hold), and removing the image removes them."""
    store = Store(root)
    layers = store.layer_dirs(store.resolve(image))
    tables = root / "index" / TABLE_DIR
    assert sorted(tablepack.roots(str(tables))) == sorted(os.fsencode(os.path.realpath(p)) for p in layers)
    assert len(layers) > 1
    kept = _stamp(tables)
    strata(root, "mount", image, str(mnt))
    assert (mnt / "etc/hostname").read_text() == "layered-v5\n"
    strata(root, "umount", str(mnt))
    assert _stamp(tables) == kept  # used, not rewritten
    strata(root, "rmi", image)
    assert not any(p.exists() for p in layers)
    assert tablepack.roots(str(tables)) == []


def _stamp(tables: Path) -> tuple[int, int, int]:
    st = (tables / tablepack.PACK).stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def test_commit_and_import_keep_the_new_layers_table(root: Path, image: str, mnt: Path, tmp_path: Path) -> None:
    """The layer `commit` or `import` just wrote is scanned then, so the image's first mount
    merges kept tables only (every table is there, and the mount rewrites none)."""
    tables = root / "index" / TABLE_DIR
    cid = strata(root, "create", image).stdout.decode().strip()
    strata(root, "mount", cid, str(mnt))
    (mnt / "etc/new").write_text("x")
    strata(root, "umount", str(mnt))
    committed = strata(root, "commit", cid, "committed:1").stdout.decode().strip()
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "rootfs/f").write_text("f")
    subprocess.run(["tar", "-C", str(tmp_path / "rootfs"), "-cf", str(tmp_path / "r.tar"), "."], check=True)
    imported = strata(root, "import", str(tmp_path / "r.tar"), "imported:1").stdout.decode().strip()
    store = Store(root)
    for ref, path in ((committed, "etc/new"), (imported, "f")):
        layers = store.layer_dirs(store.resolve(ref))
        assert {os.fsencode(os.path.realpath(p)) for p in layers} <= set(tablepack.roots(str(tables)))
        kept = _stamp(tables)
        strata(root, "mount", ref, str(mnt))
        assert (mnt / path).exists()
        strata(root, "umount", str(mnt))
        assert _stamp(tables) == kept


def test_browsing_mounts_are_nodev_nosuid_unless_asked(root: Path, image: str, mnt: Path) -> None:
    for flags, want in (((), os.ST_NODEV | os.ST_NOSUID), (("--dev", "--suid"), 0), (("--suid",), os.ST_NODEV)):
        strata(root, "mount", *flags, image, str(mnt))
        try:
            assert os.statvfs(mnt).f_flag & (os.ST_NODEV | os.ST_NOSUID) == want, flags
        finally:
            strata(root, "umount", str(mnt))


def test_read_write_image_mount_uses_a_throwaway_container(root: Path, image: str, mnt: Path) -> None:
    strata(root, "mount", "--read-write", image, str(mnt))
    (mnt / "etc/new").write_text("x")
    ps = strata(root, "ps", "--format", "{{.Names}} {{.Mounted}}").stdout.decode().split()
    assert ps[1] == str(mnt)
    strata(root, "umount", str(mnt))
    assert Store(root).containers.all() == []


def test_container_lifecycle_and_mounted_rm(root: Path, image: str, mnt: Path) -> None:
    cid = strata(root, "create", "--name", "web", image).stdout.decode().strip()
    assert len(cid) == 64
    assert strata(root, "ps", "-q").stdout.decode() == ""
    assert strata(root, "ps", "-a", "-q").stdout.decode().strip() == cid[:12]
    strata(root, "mount", "web", str(mnt))
    (mnt / "data/keep.txt").write_text("changed\n")
    proc = strata(root, "mount", "web", str(mnt), check=False)
    assert proc.returncode == 1 and "already mounted" in proc.stderr.decode()
    proc = strata(root, "rm", "web", check=False)
    assert proc.returncode == 1 and "mounted" in proc.stderr.decode()
    strata(root, "umount", "web")
    strata(root, "mount", cid[:8], str(mnt))  # remount by ID prefix: the change is still there
    assert (mnt / "data/keep.txt").read_text() == "changed\n"
    strata(root, "rm", "-f", "web")
    assert not is_mounted(mnt) and Store(root).containers.all() == []


def test_dead_server_is_reported_and_cleaned(root: Path, image: str, mnt: Path) -> None:
    strata(root, "create", "--name", "victim", image)
    strata(root, "mount", "victim", str(mnt))
    pid = Store(root).containers.find("victim").mount_pid
    assert pid
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    assert "dead" in strata(root, "ps", "--format", "{{.Mounted}}").stdout.decode()
    proc = strata(root, "umount", "victim")
    assert "died" in proc.stderr.decode()
    assert not is_mounted(mnt)


def test_foreground_mount_unmounts_on_sigterm(root: Path, image: str, mnt: Path) -> None:
    strata(root, "create", "--name", "fg", image)
    proc = subprocess.Popen(
        [str(Path(".venv/bin/strata").resolve()), "--root", str(root), "mount", "-f", "fg", str(mnt)]
    )
    try:
        for _ in range(200):
            if is_mounted(mnt) and (mnt / "etc").exists():
                break
            time.sleep(0.05)
        assert (mnt / "etc/hostname").exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not is_mounted(mnt)
        assert Store(root).containers.find("fg").mountpoint is None
    finally:
        proc.kill()


def test_bad_mount_input(root: Path, image: str, tmp_path: Path) -> None:
    for args, needle in [
        (["mount", "nosuch", str(tmp_path)], "No such image"),
        (["mount", image, str(tmp_path / "missing")], "missing"),
        (["mount", "--lower", str(tmp_path / "nolower"), str(tmp_path)], "nolower"),
        (["umount", str(tmp_path)], "not mounted"),
    ]:
        proc = strata(root, *args, check=False)
        err = proc.stderr.decode()
        assert proc.returncode != 0 and needle in err and "Traceback" not in err, (args, err)


def test_mount_t_fuse_strata_overlay(tmp_path: Path, mnt: Path) -> None:
    """mount(8)'s helper convention: `mount -t fuse.strata-overlay strata-overlay MNT -o lowerdir=…`."""
    if not Path("/usr/local/bin/strata-overlay").exists():
        pytest.skip("scripts/setup.sh links strata-overlay into /usr/local/bin; not done here")
    low = tmp_path / "low"
    (low / "etc").mkdir(parents=True)
    (low / "etc/hello").write_text("hello\n")
    subprocess.run(
        ["mount", "-t", "fuse.strata-overlay", "strata-overlay", str(mnt), "-o", f"lowerdir={low}"], check=True
    )
    assert (mnt / "etc/hello").read_text() == "hello\n" and is_mounted(mnt)
    subprocess.run(["umount", str(mnt)], check=True)
    assert not is_mounted(mnt)


EIO_SERVER = """
import errno, sys
import pyfuse3, trio

class EIO(pyfuse3.Operations):
    async def getattr(self, inode, ctx=None):
        raise pyfuse3.FUSEError(errno.EIO)

    async def statfs(self, ctx):
        raise pyfuse3.FUSEError(errno.EIO)

pyfuse3.init(EIO(), sys.argv[1], ["fsname=eio"])
print("ready", flush=True)
trio.run(pyfuse3.main)
"""


def test_umount_of_a_mount_that_answers_eio(root: Path, mnt: Path) -> None:
    """A server that answers every request with EIO: umount still unmounts it, in one line, no traceback."""
    server = subprocess.Popen([sys.executable, "-c", EIO_SERVER, str(mnt)], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None and server.stdout.readline() == b"ready\n"
        with pytest.raises(OSError) as e:
            os.stat(mnt)
        assert e.value.errno == errno.EIO
        proc = strata(root, "umount", str(mnt))
        assert "Traceback" not in proc.stderr.decode() and not is_mounted(mnt)
        assert server.wait(timeout=20) == 0
    finally:
        server.kill()
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)
