"""commit and export: a container's changes as a new image; its whole filesystem as one tar."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import click

from cli.common import fail, get_store, keep_layer_tables, output_file, user_errors
from store.commit import ChangedPath, commit, write_changeset
from unionfs.changes import iter_changes
from unionfs.mount import MountError, MountSpec, mount, mount_state, unmount
from unionfs.pause import pause as pause_writes
from unionfs.pause import resume as resume_writes
from unionfs.whiteout import is_private_xattr


def _keep_xattr(name: str) -> bool:
    return not is_private_xattr(name.encode())


@click.command("commit")
@click.option("-a", "--author", help='Author (e.g. "Jane Doe <jane@example.com>").')
@click.option("-m", "--message", help="Commit message.")
@click.option("-c", "--change", "changes", multiple=True, help="Apply a Dockerfile instruction (CMD, ENV, …).")
@click.option(
    "-p", "--pause/--no-pause", default=True, help="Hold writes through the mount while the layer is captured."
)
@click.option("--compression", type=click.Choice(["gzip", "zstd", "none"]), default="gzip", show_default=True)
@click.argument("container")
@click.argument("repository", required=False)
@user_errors
def commit_cmd(
    author: str | None,
    message: str | None,
    changes: tuple[str, ...],
    pause: bool,
    compression: str,
    container: str,
    repository: str | None,
) -> None:
    """Create a new image from a container's changes."""
    store = get_store()
    stack = store.stack(container)
    c = stack.container
    paused = pause and c.mount_pid is not None and c.mountpoint and mount_state(Path(c.mountpoint)) == "mounted"
    if paused:
        os.sync()  # what the kernel still holds for the mount goes through first
        try:
            pause_writes(c.mount_pid, stack.work)  # type: ignore[arg-type]
        except TimeoutError as e:
            fail(str(e))
    try:
        found = iter_changes(stack.lowers, stack.upper, stack.index_cache, stack.work)
        changed = [ChangedPath(x.path, x.kind, x.upper_path, x.opaque) for x in found]
        record = commit(
            store, stack.image, changed, _keep_xattr, repository, author, message, list(changes), compression
        )
    finally:
        if paused:
            resume_writes(c.mount_pid, stack.work)  # type: ignore[arg-type]
    keep_layer_tables(store, [record.id])  # the new layer was just written: scanned from the cache
    click.echo(record.id)


@click.command("export")
@click.option("-o", "--output", "target", help="Write to a file instead of stdout.")
@click.argument("container")
@user_errors
def export(target: str | None, container: str) -> None:
    """Export a container's whole filesystem as a tar archive."""
    stack = get_store().stack(container)
    if target is None and sys.stdout.isatty():
        fail("cowardly refusing to save to a terminal. Use the -o flag or redirect")
    with tempfile.TemporaryDirectory(prefix="strata-export-") as mp:
        # the container layer on top, read-only: a consistent view even while it is mounted elsewhere
        spec = MountSpec([stack.upper, *stack.lowers])
        try:
            mount(spec, Path(mp))
        except MountError as e:
            fail(str(e))
        try:
            entries = [ChangedPath("/" + os.path.relpath(p, mp), "A", Path(p)) for p in _walk(mp)]
            if target is None:
                write_changeset(entries, sys.stdout.buffer, _keep_xattr)
            else:
                with output_file(target) as f:
                    write_changeset(entries, f, _keep_xattr)
        finally:
            unmount(Path(mp))


def _walk(root: str) -> list[str]:
    out = []
    for dirpath, dirs, files in os.walk(root):
        out += [os.path.join(dirpath, n) for n in dirs + files]
    return out


def register(group: click.Group) -> None:
    group.add_command(commit_cmd, "commit")
    group.add_command(export)
