"""Many processes reading and writing one mount at once: no deadlock, and the same end state as
kernel overlayfs given the same workload (copy-up of one file by two writers included)."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

from unionfs.mount import MountSpec, mount, unmount

from .conftest import needs_fuse
from .helpers import build_layer, snapshot

pytestmark = needs_fuse

WORKERS = 6
ROUNDS = 150
BIG = 4 << 20
SLICE = 256 << 10


def _pattern(n: int, seed: int) -> bytes:
    return bytes((seed + i) % 251 for i in range(256)) * (n // 256)


def _layers(tmp: Path, kernel: bool) -> list[Path]:
    low = [
        ("file", "shared/big", _pattern(BIG, 0), 0o644),
        ("file", "shared/log", b"lower\n", 0o644),
        *[("file", f"shared/f{i:02d}", f"content {i}\n".encode() * 50, 0o644) for i in range(20)],
        *[("file", f"tree/d{i % 5}/g{i:02d}", f"g{i}".encode(), 0o600) for i in range(40)],
    ]
    top = [("whiteout", "tree/d0/g00"), ("file", "shared/f00", b"top\n", 0o644), ("dir", "tree/d4", 0o755, True)]
    out = []
    for name, entries in (("top", top), ("low", low)):
        build_layer(tmp / f"{name}-{kernel}", entries, kernel_form=kernel)
        out.append(tmp / f"{name}-{kernel}")
    return out


def _worker(root: str, w: int, barrier, errors) -> None:
    """One process's workload; every observation it can check, it checks (reported through *errors*)."""
    r = Path(root)
    try:
        # Two writers copy the same lower file up at once, each writing its own slice.
        barrier.wait(30)
        if w < 2:
            with open(r / "shared/big", "r+b") as f:
                f.seek(w * 2 * SLICE)
                f.write(bytes([w + 1]) * SLICE)
        barrier.wait(30)
        own = r / "own" / f"w{w}"
        own.mkdir(parents=True, exist_ok=True)
        for i in range(ROUNDS):
            p = own / f"file{i}"
            p.write_bytes(f"{w}:{i}\n".encode() * (i + 1))
            with open(p, "ab") as f:
                f.write(b"end\n")
            if p.read_bytes() != f"{w}:{i}\n".encode() * (i + 1) + b"end\n":
                errors.put(f"w{w}: {p} reads back wrong")
            os.rename(p, own / f"r{i}")
            if i % 3 == 0:
                os.unlink(own / f"r{i}")
            with open(r / "shared/log", "ab") as f:  # every worker copies this one up, then appends
                f.write(f"w{w} {i}\n".encode())
            k = (w * 7 + i) % 20
            want = b"top\n" if k == 0 else f"content {k}\n".encode() * 50
            if (r / f"shared/f{k:02d}").read_bytes() != want:
                errors.put(f"w{w}: shared/f{k:02d} reads wrong")
            names = set(os.listdir(r / "shared"))
            if not {"big", "log", *(f"f{j:02d}" for j in range(20))} <= names:
                errors.put(f"w{w}: shared/ lost entries: {sorted(names)}")
            if i == 5 and w < 4:  # renames of lower-only directories while the others list them
                os.rename(r / "tree" / f"d{w}", r / "tree" / f"moved{w}")
            os.listdir(r / "tree")
    except Exception as e:  # noqa: BLE001
        errors.put(f"w{w}: {type(e).__name__}: {e}")


def _run(root: Path) -> list[str]:
    ctx = mp.get_context("fork")
    barrier, errors = ctx.Barrier(WORKERS), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(root), w, barrier, errors)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    hung = [p.pid for p in procs if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    out = [f"workers {hung} still running after 180 s: the mount is stuck"] if hung else []
    while not errors.empty():
        out.append(errors.get())
    return out


def _normalised(tree: dict) -> dict:
    """The end state minus the one thing that depends on scheduling: the order of the log's lines."""
    t = dict(tree)
    t["shared/log"] = t["shared/log"] | {"data": b"".join(sorted(t["shared/log"]["data"].splitlines(True)))}
    return t


def test_many_writers_match_kernel_overlayfs_and_never_hang(tmp_path: Path, mounts) -> None:
    trees = {}
    for name in ("strata", "kernel"):
        lowers = _layers(tmp_path, kernel=name == "kernel")
        d = {k: tmp_path / f"{name}-{k}" for k in ("up", "work", "mnt")}
        for p in d.values():
            p.mkdir()
        if name == "strata":
            mount(MountSpec(lowers, d["up"], d["work"]), d["mnt"])
            mounts.add(d["mnt"])
        else:
            mounts.kernel_overlay(lowers, d["up"], d["work"], d["mnt"])
        errors = _run(d["mnt"])
        assert errors == [], f"{name}: {errors[:10]}"
        trees[name] = snapshot(d["mnt"], kernel=name == "kernel")
        if name == "strata":  # and it all persists in the container layer
            unmount(d["mnt"])
            mount(MountSpec(lowers, d["up"], d["work"]), d["mnt"])
            assert snapshot(d["mnt"]) == trees[name]
    s, k = trees["strata"], trees["kernel"]
    big = s["shared/big"]["data"]
    assert big[:SLICE] == b"\1" * SLICE and big[2 * SLICE : 3 * SLICE] == b"\2" * SLICE
    assert big[SLICE : 2 * SLICE] == _pattern(BIG, 0)[SLICE : 2 * SLICE] and len(big) == BIG
    assert len(s["shared/log"]["data"].splitlines()) == 1 + WORKERS * ROUNDS
    assert _normalised(s) == _normalised(k)
