"""The `strata` command: a group whose subcommands live in one module per topic."""

from __future__ import annotations

import importlib
from pathlib import Path

import click

# Each module defines click commands and a `register(group)` function.
COMMAND_MODULES = [
    "cli.images",
    "cli.archives",
    "cli.containers",
    "cli.commit",
    "cli.registry",
    "cli.system",
    "cli.bench",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="STRATA_ROOT",
    help="Store directory (default: $STRATA_ROOT, /var/lib/strata as root, else ~/.local/share/strata).",
)
@click.version_option(package_name="strata")
@click.pass_context
def cli(ctx: click.Context, root: Path | None) -> None:
    """strata: container images in a digest-addressed store, mounted through a FUSE overlay."""
    ctx.obj = {"root": root, "store": None}


for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(_name)
    except ModuleNotFoundError as e:
        if e.name != _name:
            raise
        continue
    _module.register(cli)


def main() -> None:
    cli(prog_name="strata")
