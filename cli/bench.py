"""`strata bench`: the union-filesystem benchmark; the options and all the logic are the bench's own."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bench.options import OPTIONS, Opt
from cli.common import get_store, user_errors


def _click_option(o: Opt):
    if o.kind == "flag":
        return click.option(*o.flags, o.dest, is_flag=True, help=o.help)
    typ = {
        "int": int,
        "file": click.Path(dir_okay=False, path_type=Path),
        "dir": click.Path(file_okay=False, path_type=Path),
    }.get(o.kind, str)
    return click.option(*o.flags, o.dest, type=typ, metavar=o.metavar, default=o.default, help=o.help)


@click.pass_context
@user_errors
def _bench(ctx: click.Context, **values) -> None:
    """Benchmark strata against kernel overlayfs and fuse-overlayfs (run as root)."""
    from bench.main import config_from, execute

    values["store_root"] = (ctx.find_root().obj or {}).get("root")
    if values["image"]:
        get_store(ctx).resolve(values["image"])  # an unknown image: one line, before anything is set up
    try:
        cfg = config_from(values)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    sys.exit(execute(cfg, values["output"], values["plot_path"], echo=click.echo))


for _o in reversed(OPTIONS):
    _bench = _click_option(_o)(_bench)
bench = click.command("bench")(_bench)


def register(group: click.Group) -> None:
    group.add_command(bench)
