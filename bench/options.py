"""The bench's command-line options, declared once: ``python -m bench`` parses them with argparse,
``strata bench`` turns the same table into click options (cli/bench.py)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Opt:
    flags: tuple[str, ...]
    dest: str
    help: str
    kind: str = "str"  # "flag", "str", "int", "file" (a path to write), "dir"
    metavar: str | None = None
    default: object = None


OPTIONS: list[Opt] = [
    Opt(("--quick",), "quick", "Small stacks, one repetition (about a minute).", "flag"),
    Opt(("--layers",), "layers", "Layer counts of the layers sweep (default 1,8,64,256,1000).", metavar="LIST"),
    Opt(("--files",), "files", "Files per stack in the layers sweep (default 2000).", "int", "N"),
    Opt(("--files-sweep",), "files_sweep", "File counts of the files sweep (default N/4,N,4N).", metavar="LIST"),
    Opt(("--sweep-layers",), "sweep_layers", "Layer count of the files sweep (default 8).", "int", "N"),
    Opt(
        ("--impl",),
        "impls",
        "Implementations (default: all; a -ctr suffix is the container path: a new writable mount).",
        metavar="LIST",
    ),
    Opt(("--image",), "image", "Benchmark the layers of a local image instead of synthetic stacks.", metavar="REF"),
    Opt(("--reps",), "reps", "Repetitions (default 3, --quick 1).", "int", "N"),
    Opt(("--deep-reps",), "deep_reps", "Repetitions of stacks over 100 layers (default 1).", "int", "N"),
    Opt(("-o", "--output"), "output", "Write raw results JSON.", "file"),
    Opt(("--plot",), "plot_path", "Write PNG plots (needs the optional extra strata[plot]).", "file"),
    Opt(("--no-latency-hold",), "no_latency_hold", "Do not hold /dev/cpu_dma_latency at 0.", "flag"),
    Opt(("--no-private-ns",), "no_private_ns", "Mount in the current mount namespace.", "flag"),
    Opt(("--seed",), "seed", "Seed of the synthetic stacks (default 0).", "int", "N", default=0),
    Opt(
        ("--workdir",),
        "workdir",
        "Where stacks and mount points go (default: a fresh dir in /var/tmp, removed after).",
        "dir",
    ),
    Opt(("--keep",), "keep", "Keep the generated stacks.", "flag"),
]


def parser(prog: str = "python -m bench") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Benchmark strata against kernel overlayfs and fuse-overlayfs.")
    for o in OPTIONS:
        if o.kind == "flag":
            p.add_argument(*o.flags, dest=o.dest, action="store_true", help=o.help)
        else:
            typ = {"int": int, "file": Path, "dir": Path}.get(o.kind, str)
            p.add_argument(*o.flags, dest=o.dest, type=typ, metavar=o.metavar, default=o.default, help=o.help)
    p.add_argument("--store-root", dest="store_root", type=Path, help="The strata store of --image.")
    return p
