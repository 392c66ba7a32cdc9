"""Rename benchmark: what one rename costs in a writable mount whose kernel holds many inodes.

    python -m bench.rename [--sizes 1000,100000] [--renames R]

For each size N, one lower layer holds N files in 100 directories; the mount (strata through
``strata-overlay`` with a new work dir, as containers/storage mounts a container; kernel overlayfs;
fuse-overlayfs) is walked with lstat on every file, so the server caches N nodes, and then a file
of a small directory is renamed back and forth R times, and so is a directory of it.  Prints
microseconds per rename and, per implementation, the ratio of the largest size to the smallest
(a rename should cost what its directory holds: goal <= 1.5 for strata).  No assertions.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OVERLAY = str(REPO / ".venv" / "bin" / "strata-overlay")


def make_lower(root: Path, n: int) -> None:
    for d in range(100):
        sub = root / f"d{d:03}"
        sub.mkdir(parents=True)
        for i in range(n // 100):
            (sub / f"f{i:06}").touch()
    (root / "small" / "dir").mkdir(parents=True)
    (root / "small" / "file").write_text("x")


def mount(impl: str, low: Path, up: Path, work: Path, mnt: Path) -> None:
    opts = f"lowerdir={low},upperdir={up},workdir={work}"
    cmd = {
        "strata": [OVERLAY, "-o", opts, str(mnt)],
        "kernel-overlay": ["mount", "-t", "overlay", "overlay", "-o", opts + ",redirect_dir=on,index=on", str(mnt)],
        "fuse-overlayfs": ["fuse-overlayfs", "-o", opts, str(mnt)],
    }[impl]
    subprocess.run(cmd, check=True, timeout=120, capture_output=True)


def per_rename(mnt: Path, what: str, renames: int) -> float:
    a, b = mnt / "small" / what, mnt / "small" / f"{what}.renamed"
    try:
        os.rename(a, b)  # the first one copies up; not timed
    except OSError as e:
        if e.errno != errno.EXDEV:  # (fuse-overlayfs renames no lower directory)
            raise
        return math.nan
    os.rename(b, a)
    t0 = time.perf_counter()
    for _ in range(renames):
        os.rename(a, b)
        os.rename(b, a)
    return (time.perf_counter() - t0) / (2 * renames) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,100000")
    ap.add_argument("--renames", type=int, default=500)
    ap.add_argument("--impl", default="strata,kernel-overlay,fuse-overlayfs")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    impls = args.impl.split(",")
    base = Path(tempfile.mkdtemp(prefix="strata-bench-rename-", dir="/var/tmp"))
    res: dict[tuple[str, int, str], float] = {}
    try:
        for n in sizes:
            low = base / f"low{n}"
            make_lower(low, n)
            os.sync()  # (its writeback would land in the first timings)
            for impl in impls:
                run = base / f"{impl}-{n}"
                up, work, mnt = run / "up", run / "work", run / "mnt"
                for p in (up, work, mnt):
                    p.mkdir(parents=True)
                mount(impl, low, up, work, mnt)
                try:
                    cached = sum(len(files) for _, _, files in os.walk(mnt))  # lstat of every entry
                    for what in ("file", "dir"):
                        res[impl, n, what] = per_rename(mnt, what, args.renames)
                finally:
                    subprocess.run(["umount", str(mnt)], timeout=60, capture_output=True)
                f, d = res[impl, n, "file"], res[impl, n, "dir"]
                print(f"{impl:15} {cached:>7} cached: file {f:8.1f} us  dir {d:8.1f} us")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print()
    print(f"{'rename cost':15} {'file':>20} {'dir':>20}   ({sizes[-1]} cached / {sizes[0]} cached)")
    for impl in impls:
        ratios = [res[impl, sizes[-1], w] / res[impl, sizes[0], w] for w in ("file", "dir")]
        print(f"{impl:15} {ratios[0]:19.2f}x {ratios[1]:19.2f}x")


if __name__ == "__main__":
    main()
