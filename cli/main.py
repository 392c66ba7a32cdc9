"""The `strata` command: a group whose subcommands live in one module per topic."""

from __future__ import annotations

import importlib
from pathlib import Path

import click

MANAGEMENT = ("container", "image", "system")  # Docker's management groups, listed apart in --help

# Each module defines click commands and a `register(group)` function. A module is imported only
# when one of its commands runs: importing them all cost every command ~0.3 s (httpx, trio, rich).
COMMANDS: dict[str, tuple[str, ...]] = {
    "cli.groups": ("container", "image"),
    "cli.images": ("history", "images", "inspect", "rmi", "tag"),
    "cli.archives": ("import", "load", "save"),
    "cli.containers": ("create", "diff", "mount", "ps", "rm", "umount"),
    "cli.commit": ("commit", "export"),
    "cli.build": ("build",),
    "cli.run": ("run",),
    "cli.registry": ("login", "logout", "manifest", "pull", "push", "search"),
    "cli.system": ("system",),
    "cli.bench": ("bench",),
}


class LazyGroup(click.Group):
    """A group that imports a command's module when the command is first looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({n for names in COMMANDS.values() for n in names})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands:
            for module, names in COMMANDS.items():
                if name in names:
                    self._load(module)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Docker's layout: the management groups first, then the commands."""
        names = self.list_commands(ctx)
        width = formatter.width - 6 - max(map(len, names))
        groups = [n for n in names if n in MANAGEMENT]
        for title, part in (("Management Commands", groups), ("Commands", [n for n in names if n not in groups])):
            cmds = [(n, self.get_command(ctx, n)) for n in part]
            rows = [(n, c.get_short_help_str(width)) for n, c in cmds if c is not None and not c.hidden]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)

    def _load(self, name: str) -> None:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            return
        module.register(self)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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


def main() -> None:
    cli(prog_name="strata")
