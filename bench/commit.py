"""Commit benchmark: `strata commit` vs `tar -C upper -c . | gzip` and `umoci repack`, in one run.

    python -m bench.commit [--big-mib M] [--files N] [--runs R]

The same changes go into a strata container (through its mount) and into an umoci bundle: a few
large files (half compressible) and many small ones. Then each tool turns them into a gzip layer:
strata commit (the whole command, Python start-up included), GNU tar piped into gzip over the
container layer, and umoci repack of the bundle. Prints the best of R runs, MB/s of changed data,
files/s, and strata's ratio to each. No assertions.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STRATA = str(REPO / ".venv" / "bin" / "strata")


def _run(*cmd: str, **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, **kw)  # type: ignore[call-overload]


def write_changes(root: Path, big_mib: int, files: int, seed: int = 0) -> int:
    """The same change set wherever it is applied; returns the bytes written."""
    rnd = random.Random(seed)
    (root / "big").mkdir(exist_ok=True)
    total = 0
    for i in range(max(1, big_mib // 64)):
        with open(root / "big" / f"blob{i}.bin", "wb") as f:
            for _ in range(min(64, big_mib)):
                chunk = rnd.randbytes(1 << 19) + bytes(1 << 19)  # half random, half zeros
                f.write(chunk)
                total += len(chunk)
    for i in range(files):
        d = root / "small" / f"d{i % 50:02d}"
        d.mkdir(parents=True, exist_ok=True)
        data = rnd.randbytes(2048) * 2
        (d / f"f{i:05d}.txt").write_bytes(data)
        total += len(data)
    return total


def _best(fn, runs: int) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big-mib", type=int, default=256)
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="strata-bench-commit-"))
    try:
        base = work / "base"
        (base / "etc").mkdir(parents=True)
        (base / "etc/hostname").write_text("bench\n")
        _run("tar", "-cf", str(work / "base.tar"), "-C", str(base), ".")
        root = str(work / "store")
        _run(STRATA, "--root", root, "import", str(work / "base.tar"), "bench/base:1")
        _run(STRATA, "--root", root, "create", "--name", "bench", "bench/base:1")
        mnt = work / "mnt"
        mnt.mkdir()
        _run(STRATA, "--root", root, "mount", "bench", str(mnt))
        try:
            size = write_changes(mnt, args.big_mib, args.files)
        finally:
            _run(STRATA, "--root", root, "umount", str(mnt))
        upper = next((work / "store/containers").iterdir()) / "upper"
        layout = work / "layout"
        _run(STRATA, "--root", root, "save", "--format", "oci", "-o", str(layout), "bench/base:1")
        bundle = work / "bundle"
        _run("umoci", "unpack", "--image", f"{layout}:1", str(bundle))
        write_changes(bundle / "rootfs", args.big_mib, args.files)
        n = 0

        def strata_commit() -> None:
            nonlocal n
            n += 1
            _run(STRATA, "--root", root, "commit", "bench", f"bench/out:{n}")

        def tar_gzip() -> None:
            _run("sh", "-c", f"tar -C {upper} -cf - . | gzip -c > {work / 'layer.tar.gz'}")

        def umoci_repack() -> None:
            shutil.rmtree(bundle / "rootfs.tmp", ignore_errors=True)
            _run("umoci", "repack", "--refresh-bundle", "--image", f"{layout}:out", str(bundle))

        times = {}
        for name, fn in (("strata commit", strata_commit), ("tar | gzip", tar_gzip), ("umoci repack", umoci_repack)):
            times[name] = _best(fn, args.runs)
        files = args.files + max(1, args.big_mib // 64)
        print(f"changes: {size / 1e6:.0f} MB in {files} files; best of {args.runs}; {os.cpu_count()} cores")
        for name, t in times.items():
            ratio = t / times["strata commit"]
            print(f"  {name:14s} {t:6.2f} s  {size / 1e6 / t:7.1f} MB/s  {files / t:8.0f} files/s  (x{ratio:.2f})")
    finally:
        subprocess.run(["fusermount3", "-u", str(work / "mnt")], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
