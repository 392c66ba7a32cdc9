"""Layer tables shared by every mount of a user, whatever its work dir.

A container runtime mounts each new container with a new work dir, so tables kept in the work dir
are never found again: every container of an image would scan its layers anew.  The tables of
immutable layers are kept here instead, where any later mount of the same layer directories finds
them.  Only theirs: a table is valid while its key is (:func:`unionfs.layertable.layer_key`), and a
file of a layer changed in place changes no key; the root's identity only keys a layer that never
changes, as a committed containers/storage layer (named through the store's ``overlay/l/`` links).
A cache and nothing more: if it cannot be written, mounts scan as they did without it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from . import tablepack

ENV = "STRATA_OVERLAY_TABLES"  # where to keep them instead ("" turns sharing off)


def shared_dir() -> Path | None:
    """The directory of this user's shared tables: ``$STRATA_OVERLAY_TABLES``, else
    ``/var/cache/strata-overlay`` for root and ``$XDG_CACHE_HOME/strata-overlay`` (by default
    ``~/.cache/strata-overlay``) for anyone else; None if sharing is off."""
    if ENV in os.environ:
        return Path(os.environ[ENV]) if os.environ[ENV] else None
    if os.geteuid() == 0:
        return Path("/var/cache/strata-overlay")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "strata-overlay"


def forget(table_dir: Path, root: bytes) -> None:
    """Drop the table kept for *root* (a directory mounted as an upper: it is about to change)."""
    where = os.fspath(table_dir)
    if root in tablepack.roots(where):
        tablepack.prune(where, lambda r: r != root and os.path.isdir(r))


def immutable(given: Sequence[str | bytes], real: Sequence[bytes]) -> list[bool]:
    """For each lower as the caller named it (*given*; *real*: resolved), whether it is a
    containers/storage layer named through its link, ``G/overlay/l/NAME`` -> ``G/overlay/ID/diff``:
    containers/storage links only the layers it has committed and never changes one after (new
    content goes into a new layer), so its root's identity keys its table."""
    homes: dict[bytes, bytes] = {}
    return [_committed(os.fsencode(g), r, homes) for g, r in zip(given, real, strict=True)]


def _committed(g: bytes, real: bytes, homes: dict[bytes, bytes]) -> bool:
    links, _, name = g.rstrip(b"/").rpartition(b"/")
    home, _, l_dir = links.rpartition(b"/")
    if l_dir != b"l" or not name or not home or not real.endswith(b"/diff"):
        return False
    if home not in homes:  # (a stack's links share their directory: resolve it once)
        homes[home] = os.path.realpath(home)
    return real[: -len(b"/diff")].rpartition(b"/")[0] == homes[home]
