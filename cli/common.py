"""What every command shares: the store from `--root`, and turning user errors into one line."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import click

from cli.format import TemplateError
from store.errors import StoreError
from store.store import Store

F = TypeVar("F", bound=Callable[..., Any])
# what the machine, not the program, did wrong: reported as one line, like a user's error
SYSTEM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}


def get_store(ctx: click.Context | None = None) -> Store:
    """The store named by the global `--root` (or `STRATA_ROOT`, or the default)."""
    ctx = ctx or click.get_current_context()
    obj = ctx.find_root().obj
    if obj.get("store") is None:
        root: Path | None = obj.get("root")
        obj["store"] = Store(root)
    return obj["store"]


def fail(message: str, code: int = 1) -> None:
    """Print `Error: message` on stderr and exit non-zero."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def user_errors(func: F) -> F:
    """Report StoreError (and other user-caused errors) as one line on stderr, exit 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (StoreError, TemplateError) as e:
            _abandon()
            fail(str(e))
        except KeyboardInterrupt:
            _abandon()
            sys.exit(130)
        except OSError as e:
            if e.errno not in SYSTEM_ERRNOS:
                raise
            _abandon()  # (what this command stored so far frees the disk again)
            fail(f"{e.filename}: {e.strerror}" if e.filename else str(e.strerror))
        except BrokenPipeError:
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def output_file(target: str | os.PathLike) -> Iterator[BinaryIO]:
    """A file written whole or not at all (a temporary beside it, renamed into place), with the mode
    the umask leaves of 0666, as `tar` and `docker save` create theirs."""
    path = os.path.abspath(target)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.")
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)
        with os.fdopen(fd, "wb") as f:
            yield f  # type: ignore[misc]
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _abandon() -> None:
    """A command failed: what it was adding to the store goes."""
    ctx = click.get_current_context(silent=True)
    store = ctx.find_root().obj.get("store") if ctx is not None and ctx.find_root().obj else None
    if store is not None:
        store.abandon_ingest()


def keep_layer_tables(store: Store, image_ids: list[str]) -> None:
    """Have the union filesystem scan new images' layers now, while they are in the page cache, so
    that their first mount merges kept tables instead of reading every layer."""
    from unionfs.index import prepare_tables

    for image_id in dict.fromkeys(image_ids):
        if store.images.has(image_id):
            prepare_tables(store.layer_dirs(store.images.get(image_id)), store.index_dir)
