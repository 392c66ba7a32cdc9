"""Container commands: create, ps, rm, mount, umount, diff, and `container prune`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from cli.common import fail, get_store, user_errors
from cli.format import docker_time, echo_removed, human_size, output, since
from store import views
from store.containers import Container
from store.errors import Conflict, NotFound
from store.prune import prune_containers
from store.store import Store
from unionfs.changes import iter_changes
from unionfs.mount import MountError, MountSpec, mount_state, unmount
from unionfs.mount import mount as fuse_mount


@click.command("create")
@click.option("--name", help="Assign a name to the container.")
@click.argument("image")
@user_errors
def create(name: str | None, image: str) -> None:
    """Create a container (a writable layer over IMAGE) and print its ID."""
    click.echo(get_store().create_container(image, name).id)


def _state(c: Container) -> str:
    if not c.mountpoint:
        return ""
    state = mount_state(Path(c.mountpoint))
    return c.mountpoint if state == "mounted" else f"{c.mountpoint} ({state})"


PS_HEADERS = {
    "ID": "CONTAINER ID",
    "Image": "IMAGE",
    "CreatedSince": "CREATED",
    "Status": "STATUS",
    "Names": "NAMES",
    "Mounted": "MOUNTED",
}


def _status(c: Container) -> str:
    """As Docker's STATUS column: Created, Up, or Exited (CODE) … ago."""
    if c.status == "exited":
        when = f" {since(views.parse_time(c.finished))}" if c.finished else ""
        return f"Exited ({c.exit_code}){when}"
    return "Up" if c.status == "running" else "Created"


@click.command("ps")
@click.option("-a", "--all", "show_all", is_flag=True, help="Show all containers (default: mounted ones).")
@click.option("-q", "--quiet", is_flag=True, help="Only show container IDs.")
@click.option("--no-trunc", is_flag=True, help="Don't truncate output.")
@click.option("--format", "fmt", help="Go template, 'table TEMPLATE' or 'json'.")
@user_errors
def ps(show_all: bool, quiet: bool, no_trunc: bool, fmt: str | None) -> None:
    """List containers."""
    items = [c for c in get_store().containers.all() if show_all or c.mountpoint or c.status == "running"]
    if quiet:
        for c in items:
            click.echo(c.id if no_trunc else c.id[:12])
        return
    rows = [
        {
            "ID": c.id if no_trunc else c.id[:12],
            "Image": c.image_ref,
            "CreatedSince": since(views.parse_time(c.created)),
            "CreatedAt": docker_time(views.parse_time(c.created)),
            "Status": _status(c),
            "Names": c.name,
            "Mounted": _state(c),
        }
        for c in items
    ]
    click.echo(
        output(
            fmt, rows, "table {{.ID}}\t{{.Image}}\t{{.CreatedSince}}\t{{.Status}}\t{{.Names}}\t{{.Mounted}}", PS_HEADERS
        )
    )


def _unmount_container(store: Store, c: Container) -> None:
    if c.mountpoint:
        try:
            unmount(Path(c.mountpoint))
        except MountError as e:
            fail(str(e))
    c.mountpoint, c.mount_pid = None, None
    store.containers.put(c)


def mounted(c: Container) -> bool:
    """Whether *c* is mounted now (a stale record of a mount that is gone is not)."""
    return bool(c.mountpoint) and mount_state(Path(c.mountpoint)) != "unmounted"


@click.command("prune")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation.")
@user_errors
def container_prune(force: bool) -> None:
    """Remove all stopped containers (neither running nor mounted)."""
    if not force:
        click.confirm(
            "WARNING! This will remove all stopped containers.\nAre you sure you want to continue?", abort=True
        )
    removed, freed = prune_containers(get_store(), mounted)
    echo_removed("Deleted Containers:", [c.id for c in removed])
    click.echo(f"Total reclaimed space: {human_size(freed)}")


@click.command("rm")
@click.option("-f", "--force", is_flag=True, help="Unmount a mounted container first.")
@click.argument("containers", nargs=-1, required=True)
def rm(force: bool, containers: tuple[str, ...]) -> None:
    """Remove one or more containers (and their writable layers)."""
    store = get_store()
    failed = False
    for name in containers:
        try:
            c = store.containers.find(name)
            if mounted(c):
                if not force:
                    raise Conflict(f"container {c.name} is mounted at {c.mountpoint}: umount it first or use -f")
                _unmount_container(store, c)
            store.remove_container(c)
            click.echo(name)
        except (NotFound, Conflict) as e:
            click.echo(f"Error: {e}", err=True)
            failed = True
    if failed:
        raise SystemExit(1)


def _split_dirs(text: str) -> list[Path]:
    return [Path(p) for p in text.split(":") if p]


@click.command("mount")
@click.argument("args", nargs=-1, required=True, metavar="[CONTAINER|IMAGE] MOUNTPOINT")
@click.option("--read-write", is_flag=True, help="Mount an image writable, through a throwaway container.")
@click.option("--lower", help="Mount plain layer directories L1:L2:… (topmost first) instead of an image.")
@click.option("--upper", type=click.Path(path_type=Path), help="With --lower: the writable upper directory.")
@click.option("--work", type=click.Path(path_type=Path), help="With --lower: the work directory.")
@click.option("--allow-other", is_flag=True, help="Let other users see the mount.")
@click.option("--dev", is_flag=True, help="Let device nodes in the tree work (default: nodev).")
@click.option("--suid", is_flag=True, help="Let set-user/group-ID bits take effect (default: nosuid).")
@click.option("--no-index", is_flag=True, help="Probe layers one by one instead of using the precompiled index.")
@click.option("-f", "--foreground", is_flag=True, help="Serve in the foreground until unmounted or interrupted.")
@click.option("--debug", is_flag=True, help="Log every request (implies --foreground).")
@user_errors
def mount(
    args: tuple[str, ...],
    read_write: bool,
    lower: str | None,
    upper: Path | None,
    work: Path | None,
    allow_other: bool,
    dev: bool,
    suid: bool,
    no_index: bool,
    foreground: bool,
    debug: bool,
) -> None:
    """Mount a container or an image (read-only) at MOUNTPOINT; returns once the mount answers."""
    if len(args) > 2:
        fail("too many arguments: expected [CONTAINER|IMAGE] MOUNTPOINT")
    target, mountpoint = (args[0] if len(args) == 2 else None), Path(args[-1])
    foreground = foreground or debug
    how = {"use_index": not no_index, "allow_other": allow_other, "dev": dev, "suid": suid, "debug": debug}
    if lower is None and (upper is not None or work is not None):
        fail("--upper and --work go with --lower (a container's or image's upper is the store's)")
    if lower is not None:
        if target is not None:
            fail("give either --lower or a CONTAINER|IMAGE, not both")
        spec = MountSpec(_split_dirs(lower), upper, work, **how)
        _do_mount(spec, mountpoint, foreground)
        return
    if target is None:
        fail("missing CONTAINER|IMAGE (or --lower)")
    store = get_store()
    try:
        c = store.containers.find(target)
    except NotFound:
        c = None
    if c is None:
        image = store.resolve(target)
        if not read_write:
            spec = MountSpec(store.layer_dirs(image), index_cache=store.index_cache(image), **how)
            _do_mount(spec, mountpoint, foreground)
            return
        c = store.create_container(target, throwaway=True)
    if c.mountpoint and mount_state(Path(c.mountpoint)) == "mounted":
        fail(f"container {c.name} is already mounted at {c.mountpoint}")
    stack = store.stack(c.id)
    spec = MountSpec(stack.lowers, stack.upper, stack.work, index_cache=stack.index_cache, **how)
    c.mountpoint = str(mountpoint.resolve())
    if not foreground:
        try:
            c.mount_pid = _do_mount(spec, mountpoint, False)
        except SystemExit:
            if c.throwaway:  # (the mount failed: its throwaway container goes with it)
                store.remove_container(c)
            raise
        store.containers.put(c)
        return
    c.mount_pid = os.getpid()
    store.containers.put(c)
    try:
        _do_mount(spec, mountpoint, True)
    finally:
        c.mountpoint, c.mount_pid = None, None
        store.containers.put(c)


def _do_mount(spec: MountSpec, mountpoint: Path, foreground: bool) -> int | None:
    try:
        return fuse_mount(spec, mountpoint, foreground)
    except MountError as e:
        fail(str(e))
    return None


@click.command("umount")
@click.argument("target")
@user_errors
def umount(target: str) -> None:
    """Unmount MOUNTPOINT or a mounted CONTAINER (also cleans up after a dead mount server)."""
    store = get_store()
    path = Path(target)
    mounted = {str(Path(c.mountpoint)): c for c in store.containers.all() if c.mountpoint}
    # (os.path's tests: a mount that answers EIO is no error of theirs)
    c = mounted.get(str(path.resolve())) if os.path.lexists(path) or os.path.isabs(target) else None
    if c is None and not os.path.isdir(path) and mount_state(path) == "unmounted":
        try:
            c = store.containers.find(target)
        except NotFound:
            fail(f"{target} is neither a mountpoint nor a container")
        if not c.mountpoint:
            fail(f"container {c.name} is not mounted")
    where = Path(c.mountpoint) if c is not None and c.mountpoint else path
    state = mount_state(where)
    if state == "dead":
        click.echo(f"mount server for {where} had died; cleaning up", err=True)
    if state == "unmounted" and c is None:
        fail(f"{where} is not mounted")
    if state != "unmounted":
        try:
            unmount(where)
        except MountError as e:
            fail(str(e))
    if c is not None:
        c.mountpoint, c.mount_pid = None, None
        store.containers.put(c)
        if c.throwaway:
            store.remove_container(c)


@click.command("diff")
@click.argument("container")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@user_errors
def diff(container: str, fmt: str) -> None:
    """List what changed in a container's filesystem: A (added), C (changed), D (deleted)."""
    stack = get_store().stack(container)
    changes = sorted(iter_changes(stack.lowers, stack.upper, stack.index_cache, stack.work), key=lambda x: x.path)
    if fmt == "json":
        click.echo(json.dumps([{"Path": x.path, "Kind": {"C": 0, "A": 1, "D": 2}[x.kind]} for x in changes]))
    else:
        for x in changes:
            click.echo(f"{x.kind} {x.path}")


def register(group: click.Group) -> None:
    for cmd in (create, ps, rm, mount, umount, diff):
        group.add_command(cmd)
