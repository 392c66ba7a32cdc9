"""What the kernel knows as one inode, and the merged paths it is reached by."""

from __future__ import annotations

import errno


def join(parent: bytes, name: bytes) -> bytes:
    return b"/" + name if parent == b"/" else parent + b"/" + name


def dirname(path: bytes) -> bytes:
    return path.rpartition(b"/")[0] or b"/"


class Node:
    """One inode: the merged paths that reach it (newest last; none once it is unlinked), where it
    is served from, and the descriptors the server holds open for it."""

    __slots__ = ("ino", "paths", "lower", "upper", "isdir", "nlookup", "fds", "fresh")

    def __init__(self, ino: int, path: bytes, lower: int, upper: bool, isdir: bool) -> None:
        self.ino = ino
        self.paths = [path]
        self.lower = lower  # dirs: merged lower dir (-1: none); files: serving lower entry
        self.upper = upper
        self.isdir = isdir
        self.nlookup = 0
        self.fds: list[int] = []
        # whether the newest path is the one last reached by (not removed since): a request that
        # names only the inode (fchmod, a write's dropped privileges) came through it, or through
        # a descriptor of a removed one
        self.fresh = True

    @property
    def path(self) -> bytes:
        if not self.paths:  # unlinked: only its open descriptors reach it
            raise FileNotFoundError(errno.ENOENT, "unlinked")
        return self.paths[-1]

    def add_path(self, p: bytes) -> None:
        if p in self.paths:
            self.paths.remove(p)
        self.paths.append(p)
        self.fresh = True

    def remove_path(self, p: bytes) -> None:
        """*p* no longer reaches this inode (its last path gone: the inode lives on while open)."""
        if p in self.paths:
            self.fresh = self.fresh and p != self.paths[-1]
            self.paths.remove(p)
