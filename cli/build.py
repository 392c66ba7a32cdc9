"""build: an image from a Dockerfile (the steps are store.build's; this wires in the mounts)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import click

from cli.commit import _keep_xattr
from cli.common import fail, get_store, keep_layer_tables, user_errors
from store.build.builder import Options, build
from store.commit import ChangedPath
from store.registry import pull as pull_mod
from store.registry.progress import for_terminal
from store.store import Store
from unionfs.changes import iter_changes
from unionfs.mount import MountError, MountSpec, mount, unmount


@contextmanager
def mounted(spec: MountSpec) -> Iterator[Path]:
    """*spec* mounted on a temporary directory for the time of the block (devices and setuid
    programs working, and other users served, as in a container; the directory is root's alone,
    and the command reaches the mount through its chroot)."""
    spec = spec._replace(dev=True, suid=True, allow_other=True)
    with tempfile.TemporaryDirectory(prefix="strata-root-") as mp:
        try:
            mount(spec, Path(mp))
        except MountError as e:
            fail(str(e))
        try:
            yield Path(mp)
        finally:
            unmount(Path(mp))


class _Host:
    """The union mounts and the registry a build's steps use."""

    def __init__(self, store: Store, quiet: bool) -> None:
        self.store, self.quiet = store, quiet

    def mounted(self, lowers: list[Path], upper: Path | None, work: Path | None) -> AbstractContextManager[Path]:
        return mounted(MountSpec(lowers, upper, work))

    def changes(self, lowers: list[Path], upper: Path, work: Path) -> list[ChangedPath]:
        return [ChangedPath(c.path, c.kind, c.upper_path, c.opaque) for c in iter_changes(lowers, upper, None, work)]

    def keep_xattr(self, name: str) -> bool:
        return _keep_xattr(name)

    def pull(self, name: str) -> None:
        pull_mod.pull(self.store, name, reporter=for_terminal(self.quiet))


@click.command("build")
@click.option("-t", "--tag", "tags", multiple=True, metavar="NAME[:TAG]", help="Tag the image (repeatable).")
@click.option(
    "-f", "--file", "dockerfile", type=click.Path(path_type=Path), help="Dockerfile (default: CONTEXT/Dockerfile)."
)
@click.option("--build-arg", "build_args", multiple=True, metavar="K=V", help="Set a build-time variable (repeatable).")
@click.option("--target", help="Build this stage (and the ones before it) only.")
@click.option(
    "--isolation", type=click.Choice(["oci", "chroot"]), help="How RUN runs: runc (default where installed) or chroot."
)
@click.option("--no-cache", is_flag=True, help="Run every step again (no step reused from an earlier build).")
@click.option("-q", "--quiet", is_flag=True, help="Print the image ID only.")
@click.argument("context", type=click.Path(path_type=Path))
@user_errors
def build_cmd(
    tags: tuple[str, ...],
    dockerfile: Path | None,
    build_args: tuple[str, ...],
    target: str | None,
    isolation: str | None,
    no_cache: bool,
    quiet: bool,
    context: Path,
) -> None:
    """Build an image from a Dockerfile and a context directory."""
    args = {}
    for a in build_args:
        k, eq, v = a.partition("=")
        args[k] = v if eq else ""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is not None and not epoch.isdigit():
        fail(f"SOURCE_DATE_EPOCH={epoch!r}: expected seconds since 1970")
    store = get_store()
    say = (lambda _line: None) if quiet else (lambda line: click.echo(line))
    record = build(
        store,
        context,
        dockerfile or context / "Dockerfile",
        _Host(store, quiet),
        Options(list(tags), args, target, no_cache, isolation, int(epoch) if epoch else None),
        say,
    )
    keep_layer_tables(store, [record.id])
    if not quiet:
        for t in tags:
            click.echo(f"Successfully tagged {t}")
    click.echo(record.id)


def register(group: click.Group) -> None:
    group.add_command(build_cmd, "build")
