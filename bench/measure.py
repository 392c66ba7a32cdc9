"""The measurements: one implementation over one stack, in four phases, each on a fresh mount.

Phase ``build`` (strata with the index only), page cache dropped each time: mount with neither an
index cache nor layer tables (the layers are scanned), then again with the layers' tables kept (a new
stack of layers seen before); then, in this process, the index alone: ``build_index`` scanning the
layers, and from their kept tables (cold and warm), and loading the cached index file (cold).
Phase ``first container`` (``strata-ctr`` only), page cache dropped: the first container of an image,
its layers' tables not kept yet (the later phases' mounts find them, as later containers do).
Phase ``walk``: page cache dropped, fresh mount: mount time (cold), full-tree walk (cold), walk again (warm).
Before it, for strata: the time a Python interpreter takes to start and import pyfuse3, cold (the
floor of a cold mount by a Python server).
Phase ``lookup``: fresh mount without dropping caches: mount time (warm); first and repeated listing
of the big merged directory; 2000 ``statvfs`` (one server round trip each); for strata, the Python
start again, warm; first lookup of every directory, ``lstat`` of never-looked-up files and of
missing names; the same three repeated.
Phase ``read``: page cache dropped, fresh mount: large files (MB/s) and small files (files/s), cold then warm.

A metric is ``{"seconds": s, "ops": n}`` (rate = ops/seconds; for a read of large files ops are bytes)
or, for memory, ``{"kib": k}`` (VmHWM of the FUSE server).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import impls as im
from .stack import Stack


@dataclass
class Options:
    cold: bool = True  # drop the page cache where the phase says so
    max_files: int = 20000  # cap on lstat probes of existing files
    max_missing: int = 10000
    max_small: int = 3000  # small files read per pass
    chunk: int = 1 << 20


def drop_caches() -> bool:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``; False if not permitted."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def _t(fn, *args) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn(*args)
    return time.perf_counter() - t0, n


def walk(mp: Path) -> int:
    """``os.walk`` + ``lstat`` of every entry; returns the number of entries below the root."""
    n = 0
    lstat = os.lstat
    join = os.path.join
    for dirpath, dirnames, filenames in os.walk(mp):
        for name in dirnames:
            lstat(join(dirpath, name))
        for name in filenames:
            lstat(join(dirpath, name))
        n += len(dirnames) + len(filenames)
    return n


def lstat_all(mp: Path, paths: list[str]) -> int:
    base = os.fspath(mp) + "/"
    lstat = os.lstat
    for p in paths:
        lstat(base + p)
    return len(paths)


def lstat_missing(mp: Path, paths: list[str]) -> int:
    """lstat names that must not exist; returns how many were (correctly) absent."""
    base = os.fspath(mp) + "/"
    lstat = os.lstat
    absent = 0
    for p in paths:
        try:
            lstat(base + p)
        except FileNotFoundError:
            absent += 1
        except NotADirectoryError:
            absent += 1
    return absent


def list_dir(mp: Path, rel: str) -> int:
    return len(os.listdir(os.path.join(mp, rel)))


def statfs_n(mp: Path, n: int) -> int:
    """``statvfs`` *n* times: a FUSE server answers each (nothing caches it), the round trip's floor."""
    for _ in range(n):
        os.statvfs(mp)
    return n


def python_start(cold: bool = False) -> float:
    """Seconds for this interpreter to start and import pyfuse3 (median of 3; *cold*: the page
    cache dropped before each): the floor of any mount a Python FUSE server makes."""
    times = []
    for _ in range(3):
        if cold:
            drop_caches()
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import pyfuse3"], capture_output=True, timeout=60)
        times.append(time.perf_counter() - t0)
    return sorted(times)[1]


def read_files(mp: Path, paths: list[str], chunk: int) -> int:
    """Read every file to the end; returns the bytes read."""
    base = os.fspath(mp) + "/"
    total = 0
    for p in paths:
        fd = os.open(base + p, os.O_RDONLY)
        try:
            while True:
                b = os.read(fd, chunk)
                if not b:
                    break
                total += len(b)
        finally:
            os.close(fd)
    return total


def index_times(stack: Stack, cache: Path, cold: bool) -> dict:
    """strata's index alone, timed in a fresh process, as a mount server builds it (see
    :mod:`bench.index_times`); {} if that fails."""
    job = {"layers": [str(p) for p in stack.oci_layers], "cache": str(cache), "cold": cold}
    try:
        cmd = [sys.executable, "-m", "bench.index_times"]
        r = subprocess.run(cmd, input=json.dumps(job).encode(), capture_output=True, timeout=600)
        return json.loads(r.stdout) if r.returncode == 0 else {}
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return {}


def _m(seconds: float, ops: int) -> dict:
    return {"seconds": seconds, "ops": ops}


def run_one(impl: im.Impl, stack: Stack, mp: Path, cache: Path, opts: Options, log=None) -> dict:
    """All phases of *impl* over *stack*; returns ``{"ok", "error", "metrics", "checks"}``."""
    metrics: dict[str, dict] = {}
    checks: dict[str, object] = {}
    rss: list[int] = []
    why = impl.check(stack)
    if why:
        return {"ok": False, "error": why, "metrics": {}, "checks": {}}
    cold = opts.cold

    def phase(name: str, drop: bool, body, cache_path: Path | None = cache) -> None:
        if drop and cold:
            drop_caches()
        h = impl.mount(stack, mp, cache_path)
        try:
            body(h)
            k = im.peak_rss_kib(h.pid)
            if k is not None:
                rss.append(k)
        finally:
            im.unmount(h)
        if log:
            log(f"    {impl.name}: {name} done")

    files = stack.files[: opts.max_files]
    missing = stack.missing[: opts.max_missing]
    small = stack.small[: opts.max_small]

    try:
        if isinstance(impl, im.StrataContainer):

            def first_container(h: im.Handle) -> None:
                metrics["mount_first_container"] = _m(h.mount_seconds, 1)

            shutil.rmtree(impl.tables, ignore_errors=True)  # (the first container of this image)
            phase("first container", True, first_container)
        elif isinstance(impl, im.Strata) and impl.use_index:
            from unionfs.index import TABLE_DIR

            def build(h: im.Handle) -> None:
                metrics["mount_index_build"] = _m(h.mount_seconds, 1)
                k = im.peak_rss_kib(h.pid)
                if k is not None:
                    metrics["rss_after_mount"] = {"kib": k}

            def build_from_tables(h: im.Handle) -> None:
                metrics["mount_index_build_tables"] = _m(h.mount_seconds, 1)

            cache.unlink(missing_ok=True)
            shutil.rmtree(cache.parent / TABLE_DIR, ignore_errors=True)
            phase("index build", True, build)
            cache.unlink(missing_ok=True)
            phase("index build from layer tables", True, build_from_tables)
            checks["index_cache_bytes"] = cache.stat().st_size if cache.exists() else None
            metrics.update(index_times(stack, cache, cold))

        if isinstance(impl, im.Strata) and cold:
            metrics["python_start_cold"] = _m(python_start(cold=True), 1)

        def walk_phase(h: im.Handle) -> None:
            metrics["mount_cold"] = _m(h.mount_seconds, 1)
            s, n = _t(walk, h.mountpoint)
            metrics["walk_cold"] = _m(s, n)
            checks["walk_entries"] = n
            s, n = _t(walk, h.mountpoint)
            metrics["walk_warm"] = _m(s, n)

        phase("walk", True, walk_phase)

        def lookup_phase(h: im.Handle) -> None:
            mpt = h.mountpoint
            metrics["mount_warm"] = _m(h.mount_seconds, 1)
            s, n = _t(list_dir, mpt, stack.big_dir)
            metrics["bigdir_list_first"] = _m(s, n)
            checks["bigdir_entries"] = n
            s, n = _t(list_dir, mpt, stack.big_dir)
            metrics["bigdir_list_again"] = _m(s, n)
            s, n = _t(statfs_n, mpt, 2000)
            metrics["statfs"] = _m(s, n)
            if isinstance(impl, im.Strata):
                metrics["python_start"] = _m(python_start(), 1)
            for suffix in ("first", "again"):
                s, n = _t(lstat_all, mpt, stack.dirs)
                metrics[f"lookup_dirs_{suffix}"] = _m(s, n)
                s, n = _t(lstat_all, mpt, files)
                metrics[f"lstat_files_{suffix}"] = _m(s, n)
                s, n = _t(lstat_missing, mpt, missing)
                metrics[f"lstat_missing_{suffix}"] = _m(s, len(missing))
                checks[f"missing_absent_{suffix}"] = n == len(missing)

        phase("lookup", False, lookup_phase)

        def read_phase(h: im.Handle) -> None:
            mpt = h.mountpoint
            for suffix in ("cold", "warm"):
                s, n = _t(read_files, mpt, stack.large, opts.chunk)
                metrics[f"read_large_{suffix}"] = _m(s, n)
                s, _n = _t(read_files, mpt, small, 1 << 16)
                metrics[f"read_small_{suffix}"] = _m(s, len(small))

        phase("read", True, read_phase)
    except im.CannotMount as e:
        return {"ok": False, "error": str(e), "metrics": metrics, "checks": checks}
    except OSError as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}", "metrics": metrics, "checks": checks}
    if rss:
        metrics["peak_rss"] = {"kib": max(rss)}
    checks["walk_complete"] = checks.get("walk_entries") == stack.entries
    return {"ok": True, "error": None, "metrics": metrics, "checks": checks}
