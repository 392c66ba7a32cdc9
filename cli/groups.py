"""Docker's management groups, `strata image …` and `strata container …`: each member is a
command of the top level under Docker's name for it (`image ls` is `images`, `container ls` is
`ps`), or one of the group's own (`image prune`, `container prune`)."""

from __future__ import annotations

import importlib

import click

IMAGE: dict[str, tuple[str, str]] = {
    "build": ("cli.build", "build_cmd"),
    "history": ("cli.images", "history"),
    "import": ("cli.archives", "import_"),
    "inspect": ("cli.images", "inspect"),
    "load": ("cli.archives", "load"),
    "ls": ("cli.images", "images"),
    "prune": ("cli.images", "prune"),
    "pull": ("cli.registry", "pull"),
    "push": ("cli.registry", "push"),
    "rm": ("cli.images", "rmi"),
    "save": ("cli.archives", "save"),
    "tag": ("cli.images", "tag"),
}
CONTAINER: dict[str, tuple[str, str]] = {
    "commit": ("cli.commit", "commit_cmd"),
    "create": ("cli.containers", "create"),
    "diff": ("cli.containers", "diff"),
    "export": ("cli.commit", "export"),
    "ls": ("cli.containers", "ps"),
    "mount": ("cli.containers", "mount"),
    "prune": ("cli.containers", "container_prune"),
    "rm": ("cli.containers", "rm"),
    "run": ("cli.run", "run_cmd"),
    "umount": ("cli.containers", "umount"),
}


class MemberGroup(click.Group):
    """A group whose members are imported only when one is looked up (as the top level's)."""

    def __init__(self, name: str, members: dict[str, tuple[str, str]], aliases: dict[str, str], help: str) -> None:
        super().__init__(name, help=help, context_settings={"help_option_names": ["-h", "--help"]})
        self.members, self.aliases = members, aliases

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.members)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = self.members.get(self.aliases.get(name, name))
        if target is None:
            return None
        module, attr = target
        return getattr(importlib.import_module(module), attr)


# Docker's aliases, which its help does not list either
image = MemberGroup("image", IMAGE, {"list": "ls"}, "Manage images.")
container = MemberGroup("container", CONTAINER, {"list": "ls", "ps": "ls"}, "Manage containers.")


def register(group: click.Group) -> None:
    group.add_command(image)
    group.add_command(container)
