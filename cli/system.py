"""`system df`, `system check`, `system prune`."""

from __future__ import annotations

import click

from cli.common import get_store, user_errors
from cli.containers import mounted
from cli.format import echo_removed, human_size, tabulate
from store import views
from store.prune import system_prune


@click.group("system")
def system_group() -> None:
    """Manage strata."""


@system_group.command("df")
@click.option("-v", "--verbose", is_flag=True, help="Show detailed information on space usage.")
@user_errors
def df(verbose: bool) -> None:
    """Show disk usage: images, containers, layers (a shared layer counted once), index cache."""
    rows, detail = views.disk_usage(get_store())
    lines = ["TYPE\tTOTAL\tACTIVE\tSIZE\tRECLAIMABLE"]
    for r in rows:
        pct = f" ({100 * r.reclaimable // r.size}%)" if r.size else ""
        lines.append(f"{r.type}\t{r.total}\t{r.active}\t{human_size(r.size)}\t{human_size(r.reclaimable)}{pct}")
    click.echo(tabulate(lines))
    if not verbose:
        return
    click.echo("\nImages space usage:\n")
    lines = ["IMAGE ID\tTAGS\tSIZE\tSHARED SIZE\tUNIQUE SIZE\tCONTAINERS"]
    for i in detail["images"]:
        tags = ",".join(i["tags"]) or "<none>"
        unique = i["size"] - i["shared"]
        lines.append(
            f"{views.short_id(i['id'])}\t{tags}\t{human_size(i['size'])}\t{human_size(i['shared'])}"
            f"\t{human_size(unique)}\t{i['containers']}"
        )
    click.echo(tabulate(lines))
    click.echo("\nContainers space usage:\n")
    lines = ["CONTAINER ID\tNAMES\tIMAGE\tSIZE"]
    lines += [f"{c['id'][:12]}\t{c['name']}\t{c['image']}\t{human_size(c['size'])}" for c in detail["containers"]]
    click.echo(tabulate(lines))
    click.echo("\nLayers space usage:\n")
    lines = ["CHAIN ID\tSIZE\tACTIVE"]
    lines += [
        f"{x['chain_id'][7:19]}\t{human_size(x['size'])}\t{'yes' if x['active'] else 'no'}" for x in detail["layers"]
    ]
    click.echo(tabulate(lines))


@system_group.command("check")
@click.option("-r", "--repair", is_flag=True, help="Remove what is damaged or unreferenced, and say what.")
@user_errors
def check_store(repair: bool) -> None:
    """Check the store's consistency (as podman system check, git fsck): every blob's hash, every
    layer, image record, tag and container, and nothing left over."""
    from store import check

    store = get_store()
    # (the collection lock, held throughout: no ingest starts whose new layers would look unused)
    with store.lock(), store.gc_allowed() as alone:
        for note in store.recovered:
            click.echo(f"recovered: {note}")
        if not alone:
            click.echo("Note: another strata process is adding to the store: unused layers and blobs not checked")
        problems, counts = check.check(store, orphans=alone)
        if repair and problems:
            for line in check.repair(store, problems):
                click.echo(line)
        else:
            for p in problems:
                click.echo(p.what)
    held = ", ".join(f"{n} {k if n != 1 else k[:-1]}" for k, n in counts.items())
    if not problems:
        click.echo(f"The store is consistent: {held}.")
    elif repair:
        click.echo(f"Repaired {len(problems)} problem{'s' if len(problems) != 1 else ''}: {held} before.")
    else:
        click.echo(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found ({held}); run with --repair")
        raise SystemExit(1)


@system_group.command("prune")
@click.option("-a", "--all", "everything", is_flag=True, help="Remove all unused images, not just dangling ones.")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation.")
@user_errors
def prune(everything: bool, force: bool) -> None:
    """Remove stopped containers, dangling images (-a: all unused) and unused build cache."""
    if not force:
        images, cache = ("all images without at least one container associated to them", "all build cache")
        if not everything:
            images, cache = "all dangling images", "unused build cache"
        what = ["all stopped containers", images, cache]
        listing = "".join(f"\n  - {w}" for w in what)
        click.confirm(f"WARNING! This will remove:{listing}\n\nAre you sure you want to continue?", abort=True)
    store = get_store()
    r = system_prune(store, everything, mounted)
    for note in store.notes:
        click.echo(f"Note: {note}", err=True)
    echo_removed("Deleted Containers:", [c.id for c in r.containers])
    echo_removed("Deleted Images:", [f"{e.kind.lower()}: {e.what}" for e in r.images])
    echo_removed("Deleted build cache objects:", r.cache)
    click.echo(f"Total reclaimed space: {human_size(r.bytes)}")


def register(group: click.Group) -> None:
    group.add_command(system_group)
