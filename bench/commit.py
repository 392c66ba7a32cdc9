"""Commit benchmark: `strata commit` vs `tar -C upper -c . | gzip` and `umoci repack`, in one run.

    python -m bench.commit [--big-mib M] [--files N] [--runs R]

The same changes go into a strata container (through its mount) and into an umoci bundle: a few
large files (half compressible) and many small ones. Then each tool turns them into a gzip layer:
strata commit (the whole command, Python start-up included, and everything it does before the
image is usable: the blob, and the layer directory unpacked and synced so the image mounts at
once), GNU tar piped into gzip over the container layer, and umoci repack of the bundle.

Every run does the full work: before each strata run one small file in the container layer gets
new content, so the commit makes a new layer (an identical one would only be unpacked again and
thrown away), and umoci's bundle metadata is put back as `umoci unpack` left it, since
`--refresh-bundle` would leave the next repack nothing to do. Nothing is deleted between runs
(mass deletions make the next file creations slow on some filesystems), and `sync` runs before
each timed run so none pays for another's writeback. The tools take turns, R runs each; prints
the median and every sample, MB/s of changed data, files/s, and each tool's time relative to
strata's. No assertions.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
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


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    os.sync()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big-mib", type=int, default=256)
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=5)
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
        (upper / "run").write_text("0\n")
        (bundle / "rootfs" / "run").write_text("0\n")
        unpacked = work / "bundle-meta"  # the bundle's metadata as umoci unpack left it
        unpacked.mkdir()
        for p in bundle.iterdir():
            if p.is_file():
                shutil.copy2(p, unpacked / p.name)
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

        def fresh_state(name: str, rep: int) -> None:
            if name == "strata commit":
                (upper / "run").write_text(f"{rep + 1}\n")  # a new state: the commit makes a new layer
            elif name == "umoci repack":
                for p in bundle.iterdir():
                    if p.is_file():
                        p.unlink()
                for p in unpacked.iterdir():
                    shutil.copy2(p, bundle / p.name)

        tools = [("strata commit", strata_commit), ("tar | gzip", tar_gzip), ("umoci repack", umoci_repack)]
        samples: dict[str, list[float]] = {name: [] for name, _ in tools}
        for rep in range(args.runs):
            for name, fn in tools[rep % len(tools) :] + tools[: rep % len(tools)]:  # take turns, rotated
                fresh_state(name, rep)
                samples[name].append(_timed(fn))
        times = {name: statistics.median(ts) for name, ts in samples.items()}
        files = args.files + max(1, args.big_mib // 64)
        print(f"changes: {size / 1e6:.0f} MB in {files} files; median of {args.runs}; {os.cpu_count()} cores")
        for name, t in times.items():
            ratio = t / times["strata commit"]
            runs = " ".join(f"{x:.2f}" for x in samples[name])
            print(
                f"  {name:14s} {t:6.2f} s  {size / 1e6 / t:7.1f} MB/s  {files / t:8.0f} files/s  (x{ratio:.2f})"
                f"  [{runs}]"
            )
    finally:
        subprocess.run(["fusermount3", "-u", str(work / "mnt")], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
