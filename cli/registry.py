"""Registry commands: pull, push, login, logout, manifest inspect, search (logic in store.registry)."""

from __future__ import annotations

import json
import sys

import click

from cli.common import get_store, keep_layer_tables, user_errors
from store.registry import auth, remote
from store.registry import pull as pull_mod
from store.registry import push as push_mod
from store.registry.client import ClientOptions, insecure_registries
from store.registry.errors import RegistryError
from store.registry.progress import for_terminal

_insecure_option = click.option(
    "--insecure-registry",
    "insecure",
    multiple=True,
    metavar="HOST",
    help="Allow plain HTTP or unverified TLS for HOST (repeatable; also $STRATA_INSECURE_REGISTRIES).",
)


def _options(insecure: tuple[str, ...], max_connections: int = 4) -> ClientOptions:
    return ClientOptions(insecure=insecure_registries(insecure), max_connections=max_connections)


@click.command()
@click.option("-a", "--all-tags", is_flag=True, help="Download all tagged images in the repository.")
@click.option("-q", "--quiet", is_flag=True, help="Suppress verbose output (print only the reference).")
@click.option("--platform", metavar="OS/ARCH[/VARIANT]", help="Pick this platform from a multi-platform image.")
@click.option("--max-concurrent-downloads", default=4, show_default=True, type=click.IntRange(1, 32))
@_insecure_option
@click.argument("name")
@user_errors
def pull(
    name: str,
    all_tags: bool,
    quiet: bool,
    platform: str | None,
    max_concurrent_downloads: int,
    insecure: tuple[str, ...],
) -> None:
    """Download an image (NAME[:TAG|@DIGEST]) from a registry."""
    store = get_store()
    results = pull_mod.pull(
        store,
        name,
        all_tags=all_tags,
        platform=platform,
        options=_options(insecure, max_concurrent_downloads),
        reporter=for_terminal(quiet),
    )
    keep_layer_tables(store, [r.image_id for r in results])
    status, full = pull_mod.status_line(results, name, all_tags)
    if not quiet:
        click.echo(status)
    click.echo(full)


@click.command()
@click.option("-q", "--quiet", is_flag=True, help="Suppress verbose output.")
@click.option("--max-concurrent-uploads", default=4, show_default=True, type=click.IntRange(1, 32))
@_insecure_option
@click.argument("name")
@user_errors
def push(name: str, quiet: bool, max_concurrent_uploads: int, insecure: tuple[str, ...]) -> None:
    """Upload an image (NAME[:TAG]) to its registry."""
    store = get_store()
    result = push_mod.push(
        store, name, options=_options(insecure, max_concurrent_uploads), reporter=for_terminal(quiet)
    )
    if quiet:
        click.echo(str(result.reference))


@click.command()
@click.option("-u", "--username", help="Username.")
@click.option("-p", "--password", help="Password (prefer --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@_insecure_option
@click.argument("server", required=False, default="docker.io")
@user_errors
def login(
    server: str, username: str | None, password: str | None, password_stdin: bool, insecure: tuple[str, ...]
) -> None:
    """Log in to a registry (credentials are kept in $DOCKER_CONFIG/config.json)."""
    if password and password_stdin:
        raise RegistryError("--password and --password-stdin are mutually exclusive")
    if password_stdin:
        if not username:
            raise RegistryError("must provide --username with --password-stdin")
        password = sys.stdin.read().rstrip("\r\n")
    elif password:
        click.echo("WARNING! Using --password via the CLI is insecure. Use --password-stdin.", err=True)
    if not username:
        username = click.prompt("Username")
    if not password:
        password = click.prompt("Password", hide_input=True)
    where = remote.login(server, auth.Credentials(username, password), _options(insecure))
    if where.endswith("config.json"):
        click.echo(f"WARNING! Your password will be stored unencrypted in {where}.", err=True)
    click.echo("Login Succeeded")


@click.command()
@click.argument("server", required=False, default="docker.io")
@user_errors
def logout(server: str) -> None:
    """Remove the stored credentials of a registry."""
    host = auth.normalize_server(server)
    if auth.erase_credentials(host):
        click.echo(f"Removing login credentials for {host}")
    else:
        click.echo(f"Not logged in to {host}")


@click.group()
def manifest() -> None:
    """Inspect manifests and manifest lists in a registry."""


@manifest.command("inspect")
@click.option("--raw", is_flag=True, help="Print the manifest bytes exactly as the registry sent them.")
@_insecure_option
@click.argument("name")
@user_errors
def manifest_inspect(name: str, raw: bool, insecure: tuple[str, ...]) -> None:
    """Print the manifest or index JSON of NAME[:TAG|@DIGEST]."""
    data, _, _ = remote.inspect(name, _options(insecure))
    if raw:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    click.echo(json.dumps(json.loads(data), indent=3, ensure_ascii=False))


@click.command()
@click.option("--limit", default=25, show_default=True, type=int, help="Max number of results.")
@click.option("-f", "--filter", "filters", multiple=True, help="stars=N, is-official=BOOL, is-automated=BOOL.")
@click.option("--no-trunc", is_flag=True, help="Don't truncate descriptions.")
@_insecure_option
@click.argument("term")
@user_errors
def search(term: str, limit: int, filters: tuple[str, ...], no_trunc: bool, insecure: tuple[str, ...]) -> None:
    """Search repositories (Docker Hub, or HOST/TERM for another registry's catalog)."""
    hits = remote.search(term, limit, filters, _options(insecure))
    click.echo(remote.format_search(hits, no_trunc))


def register(group: click.Group) -> None:
    """Add the registry commands to the `strata` group."""
    for cmd in (pull, push, login, logout, manifest, search):
        group.add_command(cmd)
