"""Image commands: images / image ls, tag, rmi / image rm, image prune, inspect, history."""

from __future__ import annotations

import json

import click

from cli.common import get_store, user_errors
from cli.format import docker_time, echo_removed, human_size, output, render, since
from store import views
from store.digest import hex_of
from store.errors import StoreError

IMAGE_HEADERS = {
    "ID": "IMAGE ID",
    "Repository": "REPOSITORY",
    "Tag": "TAG",
    "Digest": "DIGEST",
    "CreatedSince": "CREATED",
    "CreatedAt": "CREATED AT",
    "Size": "SIZE",
}


@click.command("images")
@click.argument("repository", required=False)
@click.option("-a", "--all", "show_all", is_flag=True, help="Show all images (default hides intermediate images).")
@click.option("-q", "--quiet", is_flag=True, help="Only show image IDs.")
@click.option("--digests", is_flag=True, help="Show digests.")
@click.option("--no-trunc", is_flag=True, help="Don't truncate output.")
@click.option("-f", "--filter", "filters", multiple=True, help="dangling=, before=, since=, reference=, label=")
@click.option("--format", "fmt", help="Go template, 'table TEMPLATE' or 'json'.")
@user_errors
def images(
    repository: str | None, show_all: bool, quiet: bool, digests: bool, no_trunc: bool, filters: tuple, fmt: str | None
) -> None:
    """List images."""
    rows = views.image_rows(get_store(), show_all, list(filters), repository)
    if quiet:
        seen: list[str] = []
        for r in rows:
            shown = r.id if no_trunc else hex_of(r.id)[:12]
            if shown not in seen:
                seen.append(shown)
        if seen:
            click.echo("\n".join(seen))
        return
    data = [
        {
            "ID": r.id if no_trunc else hex_of(r.id)[:12],
            "Repository": r.repository,
            "Tag": r.tag,
            "Digest": r.digest,
            "CreatedSince": since(r.created),
            "CreatedAt": docker_time(r.created),
            "Size": human_size(r.size),
            "Containers": "N/A",
        }
        for r in rows
    ]
    columns = (
        "{{.Repository}}\t{{.Tag}}\t" + ("{{.Digest}}\t" if digests else "") + "{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
    )
    text = output(fmt, data, "table " + columns, IMAGE_HEADERS)
    if text:
        click.echo(text)


@click.command("tag")
@click.argument("source")
@click.argument("target")
@user_errors
def tag(source: str, target: str) -> None:
    """Create a tag TARGET that refers to SOURCE."""
    get_store().tag(source, target)


@click.command("rmi")
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Force removal of the image.")
@click.option("--no-prune", is_flag=True, help="Do not delete untagged parents.")
def rmi(names: tuple[str, ...], force: bool, no_prune: bool) -> None:
    """Remove one or more images."""
    store = get_store()
    failed = False
    for name in names:
        try:
            for event in store.remove(name, force=force, prune=not no_prune):
                click.echo(str(event))
        except StoreError as e:
            click.echo(f"Error: {e}", err=True)
            failed = True
    for note in store.notes:
        click.echo(f"Note: {note}", err=True)
    if failed:
        raise SystemExit(1)


@click.command("prune")
@click.option("-a", "--all", "everything", is_flag=True, help="Remove all unused images, not just dangling ones.")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation.")
@click.option(
    "--filter", "filters", multiple=True, help="label=K[=V], until is not supported; reference=, before=, since="
)
@user_errors
def prune(everything: bool, force: bool, filters: tuple[str, ...]) -> None:
    """Remove unused images."""
    store = get_store()
    if not force:
        what = "all images without at least one container associated to them" if everything else "all dangling images"
        click.confirm(f"WARNING! This will remove {what}.\nAre you sure you want to continue?", abort=True)
    keep: set[str] = set()
    if filters:
        matching = {r.id for r in views.image_rows(store, True, list(filters))}
        keep = {r.id for r in store.images.all()} - matching
    events, freed = store.prune(everything, keep)
    for note in store.notes:
        click.echo(f"Note: {note}", err=True)
    echo_removed("Deleted Images:", [f"{e.kind.lower()}: {e.what}" for e in events])
    click.echo(f"Total reclaimed space: {human_size(freed)}")


@click.command("inspect")
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--format", "fmt", help="Go template applied to each image.")
def inspect(names: tuple[str, ...], fmt: str | None) -> None:
    """Show low-level information on images."""
    store = get_store()
    results, failed = [], False
    for name in names:
        try:
            results.append(views.inspect(store, store.resolve(name)))
        except StoreError as e:
            click.echo(f"Error: {e}", err=True)
            failed = True
    if fmt:
        for r in results:
            try:
                click.echo(render(fmt, r))
            except ValueError as e:
                click.echo(f"Error: template parsing error: {e}", err=True)
                raise SystemExit(1) from None
    else:
        click.echo(json.dumps(results, indent=4))
    if failed:
        raise SystemExit(1)


HISTORY_HEADERS = {
    "ID": "IMAGE",
    "CreatedSince": "CREATED",
    "CreatedAt": "CREATED AT",
    "CreatedBy": "CREATED BY",
    "Size": "SIZE",
    "Comment": "COMMENT",
}


@click.command("history")
@click.argument("name")
@click.option("--no-trunc", is_flag=True, help="Don't truncate output.")
@click.option("-q", "--quiet", is_flag=True, help="Only show image IDs.")
@click.option("-H", "--human", default=True, type=bool, help="Print sizes and dates in human readable format.")
@click.option("--format", "fmt", help="Go template, 'table TEMPLATE' or 'json'.")
@user_errors
def history(name: str, no_trunc: bool, quiet: bool, human: bool, fmt: str | None) -> None:
    """Show the history of an image."""
    store = get_store()
    rows = views.history(store, store.resolve(name))

    def short(i: str) -> str:
        return i if no_trunc or i == "<missing>" else hex_of(i)[:12]

    if quiet:
        click.echo("\n".join(short(r.id) for r in rows))
        return
    data = []
    for r in rows:
        created_by = r.created_by.replace("\t", " ").replace("\n", " ")
        if not no_trunc and len(created_by) > 45:
            created_by = created_by[:44] + "…"
        old = r.created.year < 2000
        data.append(
            {
                "ID": short(r.id),
                "CreatedSince": "" if old else (since(r.created) if human else r.created.isoformat()),
                "CreatedAt": "" if old else r.created.isoformat(),
                "CreatedBy": created_by,
                "Size": human_size(r.size) if human else str(r.size),
                "Comment": r.comment,
                "Tags": r.tags,
            }
        )
    text = output(
        fmt, data, "table {{.ID}}\t{{.CreatedSince}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}", HISTORY_HEADERS
    )
    click.echo(text)


def register(group: click.Group) -> None:
    for cmd in (images, tag, rmi, inspect, history):
        group.add_command(cmd)
