"""commit --pause on a mounted container: writes wait while the layer is captured, readers do not."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from store.store import Store
from tests.helpers import strata
from unionfs.pause import pause, resume


@pytest.fixture
def mounted(root: Path, image_layouts: Path, mnt: Path) -> Path:
    strata(root, "load", "-i", str(image_layouts / "oci/tiny"))
    strata(root, "tag", Store(root).images.all()[0].id, "tiny:latest")
    strata(root, "create", "--name", "busy", "tiny:latest")
    strata(root, "mount", "busy", str(mnt))
    return mnt


def test_paused_mount_holds_writes_but_serves_reads(root: Path, mounted: Path) -> None:
    c = Store(root).containers.find("busy")
    work = Store(root).containers.work(c.id)
    assert c.mount_pid
    # Looked up before the pause: a lookup of a name not yet cached would wait, in the kernel, for
    # the directory lock that the paused create below holds (as on any filesystem).
    assert (mounted / "hello.txt").read_text()
    pause(c.mount_pid, work)
    done = threading.Event()

    def writer() -> None:
        (mounted / "new.txt").write_text("written while paused\n")
        done.set()

    t = threading.Thread(target=writer)
    try:
        t.start()
        assert (mounted / "hello.txt").read_text()  # reads are served
        assert not done.wait(0.5), "a write went through while the mount was paused"
    finally:
        resume(c.mount_pid, work)
    assert done.wait(10)
    t.join()
    assert (mounted / "new.txt").read_text() == "written while paused\n"


def test_commit_while_a_writer_runs(root: Path, mounted: Path) -> None:
    stop = threading.Event()
    record = b"r" * 4095 + b"\n"

    def writer() -> None:
        with open(mounted / "log.bin", "ab", buffering=0) as f:
            while not stop.is_set():
                f.write(record)

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(0.3)
        for i in range(3):
            strata(root, "commit", "busy", f"snap:{i}")
    finally:
        stop.set()
        t.join()
    s = Store(root)
    for i in range(3):
        image = s.resolve(f"snap:{i}")
        top = s.layers.path(s.chain(image)[-1])
        size = os.path.getsize(top / "log.bin")
        assert size > 0 and size % len(record) == 0, size  # whole records only: captured between writes
    info = json.loads(strata(root, "inspect", "snap:2").stdout)[0]
    assert (
        len(info["RootFS"]["Layers"])
        == len(json.loads(strata(root, "inspect", "tiny").stdout)[0]["RootFS"]["Layers"]) + 1
    )
