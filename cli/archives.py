"""Archive commands: load, save, import."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cli.common import fail, get_store, keep_layer_tables, output_file, user_errors
from cli.format import human_size
from store import archive, reference
from store.importer import import_tarball
from store.urls import fetch, is_url


@click.command("load")
@click.option(
    "-i", "--input", "source", help="Read from a tar archive file or an OCI layout directory (default: stdin)."
)
@click.option("-q", "--quiet", is_flag=True, help="Suppress the load output.")
@user_errors
def load(source: str | None, quiet: bool) -> None:
    """Load images from a `docker save` archive or an OCI image layout."""
    store = get_store()
    if source is None and sys.stdin.isatty():
        fail("requested load from stdin, but stdin is empty")
    before = store.images.tags()
    loaded = archive.load(store, Path(source) if source else sys.stdin.buffer)
    keep_layer_tables(store, [item.record.id for item in loaded])
    if quiet:
        return
    for item in loaded:
        for t in item.tags:
            old = before.get(str(t))
            if old and old != item.record.id:
                click.echo(f"The image {t.familiar} already exists, renaming the old one with ID {old} to empty string")
            click.echo(f"Loaded image: {t.familiar}")
        if not item.tags:
            click.echo(f"Loaded image ID: {item.record.id}")


@click.command("save")
@click.argument("names", nargs=-1, required=True)
@click.option("-o", "--output", "target", help="Write to a file (or, with --format oci, a directory), not stdout.")
@click.option("--format", "fmt", type=click.Choice(["docker", "oci"]), default="docker", show_default=True)
@user_errors
def save(names: tuple[str, ...], target: str | None, fmt: str) -> None:
    """Save images to a tar archive (Docker's format), or an OCI image layout."""
    store = get_store()
    for n in names:
        store.resolve(n)  # fail before writing anything
    if target is None:
        if sys.stdout.isatty():
            fail("cowardly refusing to save to a terminal. Use the -o flag or redirect")
        archive.save(store, list(names), sys.stdout.buffer, fmt)
        return
    path = Path(target)
    if fmt == "oci" and not path.name.endswith(".tar"):
        archive.save_to_dir(store, list(names), path)
        return
    with output_file(path) as f:
        archive.save(store, list(names), f, fmt)


@click.command("import")
@click.argument("source")
@click.argument("repository", required=False)
@click.option("-m", "--message", help="Commit message for the imported image.")
@click.option("-c", "--change", "changes", multiple=True, help="Apply a Dockerfile instruction (CMD, ENV, …).")
@user_errors
def import_(source: str, repository: str | None, message: str | None, changes: tuple[str, ...]) -> None:
    """Import a rootfs tarball (FILE, URL or - for stdin; plain, gzip, bzip2, xz or zstd) as a
    one-layer image, as `docker import`."""
    store = get_store()
    if repository:
        reference.parse(repository)  # a bad name fails before anything is stored
    if source == "-":
        record = import_tarball(store, sys.stdin.buffer, "-", repository, message, list(changes))
    elif is_url(source):
        click.echo(f"Downloading from {source}", err=True)
        with fetch(source, _progress if sys.stderr.isatty() else None) as f:
            record = import_tarball(store, f, source, repository, message, list(changes))
        if sys.stderr.isatty():
            click.echo(err=True)
    else:
        try:
            f = open(source, "rb")
        except OSError as e:
            fail(f"cannot read {source}: {e.strerror}")
        with f:
            record = import_tarball(store, f, source, repository, message, list(changes))
    keep_layer_tables(store, [record.id])
    click.echo(record.id)


def _progress(done: int, total: int | None) -> None:
    of = f"/{human_size(total)}" if total else ""
    click.echo(f"\r{human_size(done)}{of}", nl=False, err=True)


def register(group: click.Group) -> None:
    for cmd in (load, save, import_):
        group.add_command(cmd)
