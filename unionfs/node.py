"""What the kernel knows as one inode, and the merged paths it is reached by."""

from __future__ import annotations


def join(parent: bytes, name: bytes) -> bytes:
    return b"/" + name if parent == b"/" else parent + b"/" + name


def dirname(path: bytes) -> bytes:
    return path.rpartition(b"/")[0] or b"/"


class Node:
    """One inode: the merged paths that reach it (newest last) and where it is served from."""

    __slots__ = ("ino", "paths", "lower", "upper", "isdir", "nlookup")

    def __init__(self, ino: int, path: bytes, lower: int, upper: bool, isdir: bool) -> None:
        self.ino = ino
        self.paths = [path]
        self.lower = lower  # dirs: merged lower dir (-1: none); files: serving lower entry
        self.upper = upper
        self.isdir = isdir
        self.nlookup = 0

    @property
    def path(self) -> bytes:
        return self.paths[-1]

    def add_path(self, p: bytes) -> None:
        if p in self.paths:
            self.paths.remove(p)
        self.paths.append(p)

    def remove_path(self, p: bytes) -> None:
        if p in self.paths and len(self.paths) > 1:
            self.paths.remove(p)
