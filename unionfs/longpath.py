"""Paths longer than the kernel takes in one system call.

A merged path may be as long as PATH_MAX below the mount point, so the same entry's path in a
layer (layer root + merged path) can be longer than PATH_MAX.  :func:`fit` turns such a path into
``/proc/self/fd/N/REST``, where N is an ``O_PATH`` descriptor of an ancestor directory, opened a
piece at a time; every path-taking call (xattrs too) then works on it, and joining one more name
still fits.  Short paths, nearly all of them, are returned as they are.

The descriptors are cached by the directory path they were opened at; whoever renames or
removes a directory of the upper calls :func:`forget` (the lowers never change).  A forgotten
descriptor is closed only at the forget after next, so a path that :func:`fit` returned stays
valid while the request that asked for it runs.
"""

from __future__ import annotations

import os

LIMIT = 3500  # PATH_MAX (4096) less "/proc/self/fd/N/", a name (255) and a separator
CACHE = 64

_dirs: dict[bytes, int] = {}
_forgotten: list[int] = []


def fit(path: bytes) -> bytes:
    """*path*, or an equivalent path short enough for one system call."""
    if len(path) < LIMIT:
        return path
    cut = path.rfind(b"/", 0, LIMIT)
    head = path[:cut]
    while True:  # the longest cached ancestor, then one piece at a time below it
        fd = _dirs.get(head)
        if fd is not None or len(head) < LIMIT:
            break
        head = head[: head.rfind(b"/", 0, len(head) - 1)]
    if fd is None:
        fd = _open(head, None)
    while len(path) - len(head) >= LIMIT:
        nxt = path.rfind(b"/", 0, len(head) + LIMIT - 1)
        fd = _open(path[:nxt], (fd, path[len(head) + 1 : nxt]))
        head = path[:nxt]
    return b"/proc/self/fd/%d%s" % (fd, path[len(head) :])


def _open(key: bytes, at: tuple[int, bytes] | None) -> int:
    if len(_dirs) >= CACHE:
        forget()
    if at is None:
        fd = os.open(key, os.O_PATH | os.O_DIRECTORY)
    else:
        fd = os.open(at[1], os.O_PATH | os.O_DIRECTORY, dir_fd=at[0])
    _dirs[key] = fd
    return fd


def reset() -> None:
    """Drop the cache without closing anything: in a forked server, whose inherited descriptors
    were closed (closing their numbers again could close a descriptor opened since)."""
    _dirs.clear()
    _forgotten.clear()


def forget() -> None:
    """Stop using the cached descriptors (a directory of the upper was renamed or removed)."""
    if not _dirs and not _forgotten:
        return
    for fd in _forgotten:
        os.close(fd)
    _forgotten[:] = _dirs.values()
    _dirs.clear()
