"""Pull benchmark: `strata pull` into an empty store vs `skopeo copy` + `umoci unpack`, in one run.

    python -m bench.pull [--registry HOST:PORT] [--image REPO:TAG] [--files N] [--big-mib M] [--runs R]
                         [--throttle MBPS]

Without `--registry` it starts a throwaway docker-registry with the shared scripts
(`$STRATA_SHARED`, default `../shared` next to the repository). Without `--image` it generates
an image (many small files plus one big incompressible file, over three layers), pushes it with
strata, and pulls it back. Prints the best time of each tool and the ratio. No assertions.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STRATA_SHARED") or REPO / ".." / "shared").resolve()
STRATA = REPO / ".venv" / "bin" / "strata"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _layer(files: int, big: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in range(max(1, files // 100)):
            info = tarfile.TarInfo(f"l{seed}/d{d:03d}")
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for i in range(files):
            size = rnd.choice([0, 100, 1000, 4000, 20000, 60000])
            data = (f"file {i} of layer {seed}\n" * (size // 20 + 1)).encode()[:size]
            info = tarfile.TarInfo(f"l{seed}/d{i % max(1, files // 100):03d}/f{i:05d}.txt")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        if big:
            info = tarfile.TarInfo(f"l{seed}/big.bin")
            info.size = big
            tar.addfile(info, io.BytesIO(rnd.randbytes(big)))
    return gzip.compress(buf.getvalue(), compresslevel=1)


def make_image(registry: str, name: str, files: int, big_mib: int, work: Path) -> str:
    """Build a 3-layer image in a scratch store and push it with strata; returns the reference."""
    from store import mediatypes as mt
    from store import reference
    from store.layers import chain_ids
    from store.registry import push as push_mod
    from store.registry.client import ClientOptions
    from store.store import Store

    store = Store(work / "seed-store")
    refs = []
    parent = None
    for seed, (n, big) in enumerate([(files, big_mib << 20), (files // 4, 0), (files // 10, (big_mib << 20) // 4)]):
        blob = _layer(n, big, seed)
        refs.append(store.ingest_layer(io.BytesIO(blob), parent, None, mt.OCI_LAYER_GZIP))
        parent = chain_ids([x.diff_id for x in refs])[-1]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [x.diff_id for x in refs]},
    }
    ref = f"{registry}/{name}"
    store.add_image(json.dumps(config).encode(), refs, tags=[reference.parse(ref)])
    push_mod.push(store, ref, options=ClientOptions())
    return ref


def _timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def bench(ref: str, runs: int, work: Path) -> dict[str, float]:
    """Best-of-`runs` wall times: strata pull (streaming and file-first) and skopeo copy + umoci unpack."""
    times: dict[str, list[float]] = {"strata": [], "strata-file-first": [], "skopeo+umoci": []}
    for i in range(runs):
        for label, stream in (("strata", "1"), ("strata-file-first", "0")):
            root = work / f"strata-{i}"
            env = {**os.environ, "STRATA_PULL_STREAM": stream}
            start = time.perf_counter()
            subprocess.run(
                [str(STRATA), "--root", str(root), "pull", "-q", ref], check=True, capture_output=True, env=env
            )
            times[label].append(time.perf_counter() - start)
            shutil.rmtree(root, ignore_errors=True)
        oci, bundle = work / f"oci-{i}", work / f"bundle-{i}"
        start = time.perf_counter()
        subprocess.run(
            ["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}", f"oci:{oci}:x"],
            check=True,
            capture_output=True,
        )
        subprocess.run(["umoci", "unpack", "--image", f"{oci}:x", str(bundle)], check=True, capture_output=True)
        times["skopeo+umoci"].append(time.perf_counter() - start)
        shutil.rmtree(oci, ignore_errors=True)
        shutil.rmtree(bundle, ignore_errors=True)
    return {k: min(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry", help="HOST:PORT of a running registry (default: start one)")
    ap.add_argument("--image", help="REPO:TAG already in the registry (default: generate one)")
    ap.add_argument("--files", type=int, default=4000, help="small files in the generated base layer")
    ap.add_argument("--big-mib", type=int, default=48, help="size of the big incompressible file")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--throttle", type=float, default=0, help="serve through a proxy at this many MB/s")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="strata-bench-pull-"))
    state = work / "registry"
    started = False
    try:
        registry = args.registry
        if not registry:
            port = _free_port()
            subprocess.run(
                ["bash", str(SHARED / "registry" / "start-registry.sh"), str(state), "-p", str(port)],
                check=True,
                capture_output=True,
            )
            started, registry = True, f"127.0.0.1:{port}"
        ref = (
            f"{registry}/{args.image}"
            if args.image
            else make_image(registry, "bench/generated:latest", args.files, args.big_mib, work)
        )
        proxy = None
        if args.throttle:
            sys.path.insert(0, str(REPO))
            from tests.registry.faultproxy import FaultProxy

            proxy = FaultProxy(registry, rate=args.throttle * 1e6)
            ref = ref.replace(registry, proxy.start(), 1)
        try:
            t = bench(ref, args.runs, work)
        finally:
            if proxy:
                proxy.stop()
        print(f"image: {ref}" + (f" (throttled to {args.throttle} MB/s per response)" if args.throttle else ""))
        for label, value in t.items():
            print(f"{label + ':':28} {value:.3f} s (best of {args.runs})")
        print(f"ratio strata / (skopeo+umoci): {t['strata'] / t['skopeo+umoci']:.2f}")
    finally:
        if started:
            subprocess.run(["bash", str(SHARED / "registry" / "stop-registry.sh"), str(state)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
