"""run: a command in a new container, as `docker run` (the process from store.run, the
isolation from store.build.isolation, the mount from cli.build)."""

from __future__ import annotations

import sys

import click

from cli.build import mounted
from cli.common import get_store
from store import run as runspec
from store.build import isolation
from store.build.builder import use_runtime
from store.build.console import Stdio
from store.errors import NotFound, StoreError
from store.registry import pull as pull_mod
from store.registry.progress import for_terminal
from store.store import now_rfc3339
from unionfs.mount import MountSpec


@click.command("run", context_settings={"allow_interspersed_args": False})
@click.option("--rm", "remove", is_flag=True, help="Remove the container when the command exits.")
@click.option("--name", help="Name the container.")
@click.option("-e", "--env", multiple=True, metavar="K=V", help="Set an environment variable (repeatable).")
@click.option("-w", "--workdir", help="Working directory inside the container.")
@click.option("-u", "--user", help="USER[:GROUP] to run as.")
@click.option("-v", "--volume", "volumes", multiple=True, metavar="/HOST:/CTR[:ro]", help="Bind a host path in.")
@click.option("-i", "--interactive", is_flag=True, help="Pass stdin through (else the command reads /dev/null).")
@click.option("-t", "--tty", is_flag=True, help="Give the command a terminal (relayed to ours).")
@click.option("--entrypoint", help="Replace the image's entrypoint (and drop its CMD).")
@click.option("--isolation", type=click.Choice(["oci", "chroot"]), help="runc (default where installed) or chroot.")
@click.argument("image")
@click.argument("command", nargs=-1)
def run_cmd(
    remove: bool,
    name: str | None,
    env: tuple[str, ...],
    workdir: str | None,
    user: str | None,
    volumes: tuple[str, ...],
    interactive: bool,
    tty: bool,
    entrypoint: str | None,
    isolation: str | None,
    image: str,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND in a new container of IMAGE; its exit code is strata's (125: strata's own error)."""
    try:
        stdio = Stdio(interactive, tty)
        code = _run(remove, name, env, workdir, user, volumes, entrypoint, isolation, image, list(command), stdio)
    except StoreError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(125)
    sys.exit(code)


def _run(remove, name, env, workdir, user, volumes, entrypoint, isolation_name, image, command, stdio) -> int:  # noqa: ANN001
    store = get_store()
    try:
        record = store.resolve(image)
    except NotFound:
        pull_mod.pull(store, image, reporter=for_terminal(True))
        record = store.resolve(image)
    proc = runspec.process(store.config(record).get("config") or {}, command, entrypoint, list(env), workdir, user)
    binds = runspec.binds(list(volumes))
    runtime_tmp = store.blobs.tmp if use_runtime(isolation_name) else None
    c = store.create_container(record.id, name)
    c.image_ref = image
    try:
        stack = store.stack(c.id)
        with mounted(MountSpec(stack.lowers, stack.upper, stack.work, index_cache=stack.index_cache)) as rootfs:
            (rootfs / proc.workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
            for _host, target, _ro in binds:
                (rootfs / target.lstrip("/")).mkdir(parents=True, exist_ok=True)
            c.status = "running"
            store.containers.put(c)
            try:
                code = isolation.run(rootfs, proc.argv, proc.env, proc.workdir, proc.user, binds, runtime_tmp, stdio)
            except isolation.ExecFailed as e:
                click.echo(f"Error: {e}", err=True)
                code = e.code
    except BaseException:
        store.remove_container(c)
        raise
    if remove:
        store.remove_container(c)
    else:
        c.status, c.exit_code, c.finished = "exited", code, now_rfc3339()
        store.containers.put(c)
    return code


def register(group: click.Group) -> None:
    group.add_command(run_cmd, "run")
