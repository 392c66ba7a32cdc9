"""`strata bench`: the union-filesystem benchmark (logic in the bench package)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cli.common import get_store, user_errors


@click.command("bench")
@click.option("--quick", is_flag=True, help="Small stacks, one repetition (about a minute).")
@click.option("--layers", metavar="LIST", help="Layer counts of the layers sweep (default 1,8,64,256,1000).")
@click.option("--files", type=int, metavar="N", help="Files per stack in the layers sweep (default 2000).")
@click.option("--files-sweep", metavar="LIST", help="File counts of the files sweep (default N/4,N,4N).")
@click.option("--sweep-layers", type=int, metavar="N", help="Layer count of the files sweep (default 8).")
@click.option(
    "--impl",
    "impls",
    metavar="LIST",
    help="Implementations (default strata,strata-noindex,kernel-overlay,fuse-overlayfs).",
)
@click.option("--image", metavar="REF", help="Benchmark the layers of a local image instead of synthetic stacks.")
@click.option("--reps", type=int, metavar="N", help="Repetitions (default 3, --quick 1).")
@click.option("--deep-reps", type=int, metavar="N", help="Repetitions of stacks over 100 layers (default 1).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write raw results JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), help="Write PNG plots.")
@click.option("--no-latency-hold", is_flag=True, help="Do not hold /dev/cpu_dma_latency at 0.")
@click.option("--no-private-ns", is_flag=True, help="Mount in the current mount namespace.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic stacks.")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where stacks and mount points go (default: a fresh dir in /var/tmp, removed after).",
)
@click.option("--keep", is_flag=True, help="Keep the generated stacks.")
@click.pass_context
@user_errors
def bench(
    ctx: click.Context,
    quick,
    layers,
    files,
    files_sweep,
    sweep_layers,
    impls,
    image,
    reps,
    deep_reps,
    output,
    plot_path,
    no_latency_hold,
    no_private_ns,
    seed,
    workdir,
    keep,
) -> None:
    """Benchmark strata against kernel overlayfs and fuse-overlayfs (run as root)."""
    from bench.main import build_config, execute

    obj = ctx.find_root().obj or {}
    if image:
        get_store(ctx).resolve(image)  # an unknown image: one line, before anything is set up
    try:
        cfg = build_config(
            quick=quick,
            layers=layers,
            files=files,
            files_sweep=files_sweep,
            sweep_layers=sweep_layers,
            impls=impls,
            image=image,
            reps=reps,
            deep_reps=deep_reps,
            seed=seed,
            latency_hold=not no_latency_hold,
            private_ns=not no_private_ns,
            workdir=workdir,
            keep=keep,
            store_root=obj.get("root"),
        )
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    sys.exit(execute(cfg, output, plot_path, echo=lambda m: click.echo(m)))


def register(group: click.Group) -> None:
    group.add_command(bench)
