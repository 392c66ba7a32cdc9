"""Mount lifecycle: daemonized mounts answer on return, external unmount stops the server, dead
servers are detected and cleaned, read-only mounts refuse writes, concurrency during copy-up."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from unionfs.mount import MountError, MountSpec, mount, mount_state, unmount

from .conftest import needs_fuse

pytestmark = needs_fuse


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[-1][:1] != "Z"


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def layers(tmp_path: Path) -> dict[str, Path]:
    d = {k: tmp_path / k for k in ("low", "up", "work", "mnt")}
    for p in d.values():
        p.mkdir()
    (d["low"] / "hello").write_text("world")
    return d


def test_daemon_mount_answers_on_return_and_exits_on_external_umount(layers, mounts) -> None:
    pid = mount(MountSpec([layers["low"]], layers["up"], layers["work"]), layers["mnt"])
    mounts.add(layers["mnt"])
    assert isinstance(pid, int) and _alive(pid)
    # answering immediately, without retry
    assert (layers["mnt"] / "hello").read_text() == "world"
    assert mount_state(layers["mnt"]) == "mounted"
    line = [x for x in open("/proc/self/mountinfo") if f" {layers['mnt']} " in x]
    assert line and "fuse.strata-overlay" in line[0]
    subprocess.run(["umount", str(layers["mnt"])], check=True)
    assert _wait_gone(pid), "server did not exit after an external umount"
    assert mount_state(layers["mnt"]) == "unmounted"


def test_fusermount_unmount_stops_server(layers, mounts) -> None:
    pid = mount(MountSpec([layers["low"]]), layers["mnt"])
    mounts.add(layers["mnt"])
    subprocess.run(["fusermount3", "-u", str(layers["mnt"])], check=True)
    assert _wait_gone(pid)


def test_killed_server_is_dead_and_unmount_cleans(layers, mounts) -> None:
    pid = mount(MountSpec([layers["low"]], layers["up"], layers["work"]), layers["mnt"])
    mounts.add(layers["mnt"])
    os.kill(pid, signal.SIGKILL)
    assert _wait_gone(pid)
    assert mount_state(layers["mnt"]) == "dead"
    with pytest.raises(MountError, match="dead mount"):
        mount(MountSpec([layers["low"]]), layers["mnt"])
    unmount(layers["mnt"])
    assert mount_state(layers["mnt"]) == "unmounted"
    unmount(layers["mnt"])  # idempotent


def test_sigterm_unmounts_cleanly(layers, mounts) -> None:
    pid = mount(MountSpec([layers["low"]]), layers["mnt"])
    mounts.add(layers["mnt"])
    os.kill(pid, signal.SIGTERM)
    assert _wait_gone(pid)
    assert mount_state(layers["mnt"]) == "unmounted"


def test_daemon_does_not_hold_callers_stderr(layers, mounts) -> None:
    code = (
        "import sys; from pathlib import Path; from unionfs.mount import MountSpec, mount;"
        f"mount(MountSpec([Path({str(layers['low'])!r})]), Path({str(layers['mnt'])!r}))"
    )
    mounts.add(layers["mnt"])
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    # run() returning at all means EOF was seen on both pipes
    assert p.returncode == 0, p.stderr
    assert mount_state(layers["mnt"]) == "mounted"


def test_foreground_mount_serves_until_unmounted(layers, mounts) -> None:
    code = (
        "from pathlib import Path; from unionfs.mount import MountSpec, mount;"
        f"r = mount(MountSpec([Path({str(layers['low'])!r})]), Path({str(layers['mnt'])!r}), foreground=True);"
        "print('returned', r)"
    )
    mounts.add(layers["mnt"])
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 10
        while mount_state(layers["mnt"]) != "mounted":
            assert time.monotonic() < end and p.poll() is None
            time.sleep(0.02)
        assert (layers["mnt"] / "hello").read_text() == "world"
        unmount(layers["mnt"])
        out, _ = p.communicate(timeout=10)
        assert "returned None" in out
    finally:
        if p.poll() is None:
            p.kill()


def test_errors_before_mount_are_mount_errors(layers, tmp_path) -> None:
    with pytest.raises(MountError, match="lower directory"):
        mount(MountSpec([tmp_path / "missing"]), layers["mnt"])
    with pytest.raises(MountError, match="mountpoint"):
        mount(MountSpec([layers["low"]]), tmp_path / "nomnt")
    with pytest.raises(MountError, match="upper directory"):
        mount(MountSpec([layers["low"]], tmp_path / "noupper", layers["work"]), layers["mnt"])
    assert mount_state(layers["mnt"]) == "unmounted"


def test_read_only_mount_refuses_writes(layers, mounts) -> None:
    mount(MountSpec([layers["low"]]), layers["mnt"])
    mounts.add(layers["mnt"])
    m = layers["mnt"]
    for fn in (
        lambda: (m / "new").write_text("x"),
        lambda: os.mkdir(m / "d"),
        lambda: os.unlink(m / "hello"),
        lambda: open(m / "hello", "a"),
        lambda: os.chmod(m / "hello", 0o600),
    ):
        with pytest.raises(OSError) as ei:
            fn()
        assert ei.value.errno == errno.EROFS


def test_big_copy_up_does_not_block_other_requests(layers, mounts) -> None:
    big = layers["low"] / "big"
    with open(big, "wb") as f:
        for _ in range(256):
            f.write(os.urandom(1 << 20))
    mount(MountSpec([layers["low"]], layers["up"], layers["work"]), layers["mnt"])
    mounts.add(layers["mnt"])
    m = layers["mnt"]
    done = threading.Event()
    t0 = time.monotonic()

    def copy_up() -> None:
        with open(m / "big", "r+b") as f:
            f.write(b"X")
        done.set()

    th = threading.Thread(target=copy_up)
    th.start()
    time.sleep(0.05)
    latencies = []
    while not done.is_set() and time.monotonic() - t0 < 60:
        s = time.monotonic()
        assert (m / "hello").read_text() == "world"
        os.listdir(m)
        latencies.append(time.monotonic() - s)
        time.sleep(0.005)
    th.join()
    copy_time = time.monotonic() - t0
    with open(m / "big", "rb") as f:
        assert f.read(1) == b"X"
    assert os.path.getsize(m / "big") == 256 << 20
    if copy_time > 0.3:  # copy slow enough to measure: other requests went on meanwhile
        assert len(latencies) >= 3 and max(latencies) < copy_time / 2


def test_sparse_file_stays_sparse_after_copy_up(layers, mounts) -> None:
    with open(layers["low"] / "sparse", "wb") as f:
        f.truncate(1 << 30)
        f.seek(1 << 29)
        f.write(b"middle")
    mount(MountSpec([layers["low"]], layers["up"], layers["work"]), layers["mnt"])
    mounts.add(layers["mnt"])
    with open(layers["mnt"] / "sparse", "r+b") as f:
        f.seek(10)
        f.write(b"x")
        f.seek(1 << 29)
        assert f.read(6) == b"middle"
    st = os.stat(layers["up"] / "sparse")
    assert st.st_size == 1 << 30 and st.st_blocks * 512 < 1 << 24


def test_remount_keeps_changes_and_inodes(layers, mounts) -> None:
    spec = MountSpec([layers["low"]], layers["up"], layers["work"])
    m = layers["mnt"]
    mount(spec, m)
    mounts.add(m)
    ino = os.stat(m / "hello").st_ino
    (m / "hello").write_text("changed")
    os.mkdir(m / "newdir")
    (m / "newdir" / "f").write_text("f")
    assert os.stat(m / "hello").st_ino == ino  # copy-up keeps the inode
    unmount(m)
    mount(spec, m)
    assert (m / "hello").read_text() == "changed"
    assert os.stat(m / "hello").st_ino == ino
    assert (m / "newdir" / "f").read_text() == "f"


def test_one_writable_server_per_upper(layers, mounts, tmp_path: Path) -> None:
    spec = MountSpec([layers["low"]], layers["up"], layers["work"])
    second = tmp_path / "second"
    second.mkdir()
    mount(spec, layers["mnt"])
    mounts.add(layers["mnt"])
    with pytest.raises(MountError) as ei:
        mount(spec, second)
    assert str(layers["mnt"]) in str(ei.value) and "\n" not in str(ei.value)
    assert mount_state(second) == "unmounted"
    # a read-only mount of the same layers, or another upper, is no conflict
    other = tmp_path / "up2"
    other.mkdir()
    mount(MountSpec([layers["low"]], other, tmp_path / "work2"), second)
    mounts.add(second)
    unmount(second)
    # once the first server is gone, the upper is free again
    (layers["mnt"] / "kept").write_text("1")
    unmount(layers["mnt"])
    mount(spec, second)
    assert (second / "kept").read_text() == "1"


def test_damaged_index_is_rebuilt(layers, mounts, tmp_path: Path) -> None:
    from unionfs.index import HEADER, Index

    for i in range(50):
        (layers["low"] / f"f{i}").write_text(str(i))
    cache = tmp_path / "cache" / "stack.idx"
    spec = MountSpec([layers["low"]], index_cache=cache)
    mount(spec, layers["mnt"])
    mounts.add(layers["mnt"])
    want = sorted(os.listdir(layers["mnt"]))
    unmount(layers["mnt"])
    size = cache.stat().st_size
    with open(cache, "r+b") as f:  # zeroed after its header, as a torn write leaves it
        f.seek(HEADER.size)
        f.write(b"\0" * (size - HEADER.size))
    assert Index.load(cache) is None
    stale = cache.with_name(cache.name + ".tmp999999999")  # a save whose writer was killed
    stale.write_bytes(b"partial")
    mount(spec, layers["mnt"])
    assert sorted(os.listdir(layers["mnt"])) == want
    assert (layers["mnt"] / "f7").read_text() == "7"
    unmount(layers["mnt"])
    assert Index.load(cache) is not None and not stale.exists()
