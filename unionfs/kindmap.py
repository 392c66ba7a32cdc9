"""The upper layer's entries in memory: merged path -> kind, indexed by directory, so that what
changes a directory (a rename, an rmdir) costs what that directory holds, not the whole upper."""

from __future__ import annotations

from collections.abc import Iterator


def _parent(path: bytes) -> bytes:
    return path.rpartition(b"/")[0] or b"/"


class KindMap:
    """``path -> kind`` for every entry the upper holds, with each directory's children."""

    __slots__ = ("_kinds", "_children")

    def __init__(self) -> None:
        self._kinds: dict[bytes, int] = {}
        self._children: dict[bytes, set[bytes]] = {}

    def __len__(self) -> int:
        return len(self._kinds)

    def __contains__(self, path: bytes) -> bool:
        return path in self._kinds

    def get(self, path: bytes) -> int | None:
        return self._kinds.get(path)

    def set(self, path: bytes, kind: int) -> None:
        if path not in self._kinds and path != b"/":
            self._children.setdefault(_parent(path), set()).add(path)
        self._kinds[path] = kind

    def drop(self, path: bytes) -> None:
        """Forget *path* (not what is below it)."""
        if self._kinds.pop(path, None) is not None:
            kids = self._children.get(_parent(path))
            if kids is not None:
                kids.discard(path)
                if not kids:
                    del self._children[_parent(path)]

    def subtree(self, path: bytes) -> Iterator[tuple[bytes, int]]:
        """Every entry below *path* (not *path* itself), parents before their children."""
        stack = [path]
        while stack:
            for p in sorted(self._children.get(stack.pop(), ())):
                yield p, self._kinds[p]
                stack.append(p)

    def drop_tree(self, path: bytes) -> None:
        """Forget *path* and everything below it."""
        for p, _ in list(self.subtree(path)):
            self._kinds.pop(p, None)
            self._children.pop(p, None)
        self._children.pop(path, None)
        self.drop(path)

    def move_tree(self, src: bytes, dst: bytes) -> None:
        """Re-key *src* and everything below it to *dst* (after a rename on disk); what was at *dst* goes."""
        below = list(self.subtree(src))
        kind = self._kinds.get(src)
        self.drop_tree(src)
        self.drop_tree(dst)
        if kind is not None:
            self.set(dst, kind)
        for p, k in below:
            self.set(dst + p[len(src) :], k)
