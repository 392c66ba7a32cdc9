"""The merged tree: which inode a name resolves to, its attributes and its listing.

:class:`MergedTree` holds the only state the handlers share: the nodes the kernel references and
the map from upper st_ino to inode.  Inodes are stable across copy-up, rename and remount, with
nothing scanned at mount: a lower entry's inode is its index inode; a copied-up entry keeps it,
recorded on the upper entry (``Upper.set_origin``); an entry born in the upper has
``NEW_INO_BASE + its upper st_ino`` (its hard links share it).  Persistent state lives on disk and
in ``Upper.kinds``; the nodes are only a cache of what the kernel references.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

import pyfuse3

from .lowerview import dir_at, lower_groups
from .node import Node, dirname, join
from .upper import K_DIR, K_FILE, K_OPQ, K_RDR, K_WH, Upper
from .whiteout import OPAQUE_NAME, WH_PREFIX, is_whiteout_stat

NEW_INO_BASE = 1 << 32
LOWER_TIMEOUT = 60.0
UPPER_TIMEOUT = 1.0
LOWER_ATTR_CACHE = 200_000  # entries; about 40 MB at most


def fuse_error(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


class MergedTree:
    """A lower view (an :class:`~unionfs.index.Index` or a ``ProbeLower``) under an optional upper."""

    def __init__(self, lower: Any, upper: Upper | None) -> None:
        self.lo = lower
        self.up = upper
        root_kind = upper.kind(b"/") if upper else None
        root = Node(pyfuse3.ROOT_INODE, b"/", -1 if root_kind == K_OPQ else 0, upper is not None, True)
        root.nlookup = 1
        self.nodes: dict[int, Node] = {root.ino: root}
        # merged path -> the cached node it reaches, so a rename touches the nodes it moves, no others
        self.at: dict[bytes, Node] = {b"/": root}
        self.umap: dict[int, int] = {}
        if upper is not None:
            self.umap[os.lstat(upper.root).st_ino] = root.ino
        # the lower's inode numbering, if another mount of the same lowers numbers them the same
        self.view_id: int | None = getattr(lower, "view_id", None)
        self._groups: dict[int, list[int]] | None = None
        self._lattr: dict[int, pyfuse3.EntryAttributes] = {}

    def node(self, ino: int) -> Node:
        n = self.nodes.get(ino)
        if n is None:
            raise fuse_error(errno.ENOENT)
        return n

    def rw(self) -> Upper:
        if self.up is None:
            raise fuse_error(errno.EROFS)
        return self.up

    def upper_ino(self, real: bytes, st: os.stat_result) -> int:
        """The inode of the upper entry *real* whose lstat is *st* (cached by its upper st_ino)."""
        ino = self.umap.get(st.st_ino)
        if ino is None:
            ino = self.up.origin(real, self.view_id) if self.view_id is not None else None  # type: ignore[union-attr]
            if ino is None:
                ino = NEW_INO_BASE + st.st_ino
            self.umap[st.st_ino] = ino
        return ino

    def ref(self, node: Node) -> Node:
        """Count one more kernel reference to *node* (merging it into the cached node of its inode)."""
        cur = self.nodes.setdefault(node.ino, node)
        if cur is not node:
            for p in node.paths:
                cur.add_path(p)
            cur.upper, cur.lower = node.upper, node.lower
        if self.up is not None:  # (only renames read the path index, and a read-only mount has none)
            for p in cur.paths:
                self.at[p] = cur
        cur.nlookup += 1
        return cur

    def drop(self, node: Node) -> None:
        """The kernel forgot *node*: it is no longer cached."""
        del self.nodes[node.ino]
        for p in node.paths:
            if self.at.get(p) is node:
                del self.at[p]

    def add_path(self, node: Node, p: bytes) -> None:
        """*p* reaches *node* too (now its newest path)."""
        node.add_path(p)
        if self.nodes.get(node.ino) is node:
            self.at[p] = node

    def remove_path(self, node: Node, p: bytes) -> None:
        """*p* reaches *node* no more (unlinked, or replaced by a rename)."""
        node.remove_path(p)
        if self.at.get(p) is node:
            del self.at[p]

    def lower_child(self, parent: Node, name: bytes) -> int:
        return self.lo.lookup(parent.lower, name) if parent.lower >= 0 else -1

    def lower_at(self, path: bytes) -> int:
        """Lower entry that the upper would expose at *path* (ancestors' upper state respected)."""
        if path == b"/":
            return 0
        e = 0 if not self.up or self.up.kind(b"/") != K_OPQ else -1
        comps = path[1:].split(b"/")
        cur = b""
        for i, c in enumerate(comps):
            if e < 0:
                return -1
            cur += b"/" + c
            e = self.lo.lookup(e, c)
            if i < len(comps) - 1 and self.up is not None:
                k = self.up.kind(cur)
                if k == K_RDR:
                    e = self.redirected(cur)
                elif k in (K_WH, K_FILE, K_OPQ):
                    return -1
                if e >= 0 and not self.lo.is_dir(e):
                    return -1
        return e

    def redirected(self, path: bytes) -> int:
        """The lower directory that the redirected upper directory *path* merges with, or -1."""
        target = self.up.redirect(path)  # type: ignore[union-attr]
        return dir_at(self.lo, target) if target is not None else -1

    def resolve(self, parent: Node, name: bytes, lo: int | None = None) -> tuple[Node, os.stat_result | None]:
        """The node at *name* in directory *parent* (not yet referenced) or ENOENT."""
        if name.startswith(WH_PREFIX):
            raise fuse_error(errno.ENOENT)
        path = join(parent.path, name)
        k = self.up.kind(path) if self.up is not None else None
        if k == K_WH:
            raise fuse_error(errno.ENOENT)
        if lo is None:
            lo = self.lower_child(parent, name)
        if k is None:
            if lo < 0:
                raise fuse_error(errno.ENOENT)
            ino = self.lo.ino(lo)
            node = self.nodes.get(ino)
            if node is None:
                # a lower hard link whose inode was copied up through another link: served from the index
                indexed = self.up is not None and self.lower_attr(lo).st_nlink > 1 and self.linked(ino) is not None
                return Node(ino, path, lo, indexed, self.lo.is_dir(lo)), None
            self.add_path(node, path)
            return node, None
        real = self.up.real(path)
        try:
            st = os.lstat(real)
        except FileNotFoundError:
            raise fuse_error(errno.ENOENT) from None
        isdir = stat.S_ISDIR(st.st_mode)
        ino = self.upper_ino(real, st)
        if not isdir:
            lower = lo
        elif k == K_RDR:
            lower = self.redirected(path)
        else:
            lower = lo if (k == K_DIR and lo >= 0 and self.lo.is_dir(lo)) else -1
        node = self.nodes.get(ino)
        if node is None:
            return Node(ino, path, lower, True, isdir), st
        self.add_path(node, path)
        node.upper = True
        node.lower = lower
        return node, st

    def attr(self, node: Node, st: os.stat_result | None = None) -> pyfuse3.EntryAttributes:
        if not node.paths:
            return self._unlinked_attr(node)
        if not node.upper:
            return self.lower_attr(node.lower)
        return self._upper_attr(node, st)

    def _unlinked_attr(self, node: Node) -> pyfuse3.EntryAttributes:
        """An inode unlinked while open: what its descriptor says, as a local filesystem answers."""
        if not node.fds:
            raise fuse_error(errno.ENOENT)
        if node.upper:
            return self._upper_attr(node, os.fstat(node.fds[0]))
        a = self._new_lower_attr(node.lower)
        a.st_nlink = 0
        return a

    def _upper_attr(self, node: Node, st: os.stat_result | None) -> pyfuse3.EntryAttributes:
        if st is None:
            try:
                st = os.lstat(self.real(node))
            except FileNotFoundError:
                raise fuse_error(errno.ENOENT) from None
        a = pyfuse3.EntryAttributes()
        a.st_mode, a.st_nlink, a.st_uid, a.st_gid = st.st_mode, st.st_nlink, st.st_uid, st.st_gid
        hard = False  # a link of a lower hard-linked inode: see _new_lower_attr
        if not node.isdir and self.keeps_links and self.hard_group(node.ino):
            index = self.linked(node.ino)
            if index is not None and index.st_ino == st.st_ino:  # the upper's links, less the index's own, and
                a.st_nlink = st.st_nlink - 1 + len(self.lower_links(node.ino))  # the lower ones still shown
                hard = True
        a.st_rdev, a.st_size, a.st_blocks = st.st_rdev, st.st_size, st.st_blocks
        a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
        a.attr_timeout = UPPER_TIMEOUT
        if node.isdir and node.lower >= 0:
            a.st_nlink = 1  # merged: the subdirectory count is unknown (as overlayfs; find -noleaf)
        a.entry_timeout = 0 if hard else LOWER_TIMEOUT
        a.st_ino = node.ino
        a.st_blksize = 4096
        return a

    def lower_attr(self, e: int) -> pyfuse3.EntryAttributes:
        """Attributes of lower entry *e*, built once: lower entries never change (callers must not mutate)."""
        a = self._lattr.get(e)
        if a is not None:
            return a
        if len(self._lattr) >= LOWER_ATTR_CACHE:
            self._lattr.clear()
        a = self._lattr[e] = self._new_lower_attr(e)
        return a

    def _new_lower_attr(self, e: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        (
            a.st_mode,
            a.st_nlink,
            a.st_uid,
            a.st_gid,
            a.st_rdev,
            a.st_size,
            a.st_atime_ns,
            a.st_mtime_ns,
            a.st_ctime_ns,
            a.st_blocks,
        ) = self.lo.stat(e)
        if stat.S_ISDIR(a.st_mode):
            a.st_nlink = 1  # merged: the subdirectory count is unknown (as overlayfs; find -noleaf)
        a.attr_timeout = a.entry_timeout = LOWER_TIMEOUT
        if a.st_nlink > 1 and self.up is not None:
            # a lower hard link: its links are one inode, but a copy-up (as overlayfs's) brings only the
            # link it is reached by into the upper, and only a lookup tells the server which link that is
            a.entry_timeout = 0
        a.st_ino = self.lo.ino(e)
        a.st_blksize = 4096
        return a

    def parent_attr(self, node: Node) -> pyfuse3.EntryAttributes:
        """Attributes of the directory containing *node* (for the '..' entry; no lookup count)."""
        cur = self.nodes[pyfuse3.ROOT_INODE]
        parent = dirname(node.path)
        if parent != b"/" and node.path != b"/":
            try:
                for comp in parent[1:].split(b"/"):
                    cur = self.resolve(cur, comp)[0]
            except pyfuse3.FUSEError:
                cur = node
        return self.attr(cur)

    def real(self, node: Node) -> bytes:
        if node.upper:
            up = self.up
            assert up is not None
            p = node.path
            if not node.isdir and up.kind(p) is None:  # a lower link of a copied-up hard-linked inode
                return up.link_path(self.view_id, node.ino)  # type: ignore[arg-type]
            return up.real(p)
        return self.lo.real_path(node.lower)

    @property
    def keeps_links(self) -> bool:
        """Whether a copied-up lower hard link goes into the upper's index (its other links staying
        lower), as overlayfs's index=on: the upper has an index, and the lower a stable numbering."""
        return self.up is not None and self.up.links is not None and self.view_id is not None

    def linked(self, ino: int) -> os.stat_result | None:
        """The index's copy of the lower hard link *ino*, if one of its links was copied up."""
        return self.up.linked(self.view_id, ino) if self.keeps_links else None  # type: ignore[union-attr,arg-type]

    def listing(self, node: Node) -> list[tuple[bytes, int]]:
        """Merged children of *node*: (name, lower entry or -1 when served by the upper), sorted."""
        lo, up = self.lo, self.up
        if up is None or not node.upper:  # lower children come sorted by name
            return [(lo.name(e), e) for e in lo.children(node.lower)] if node.lower >= 0 else []
        names: dict[bytes, int] = {}
        hidden: set[bytes] = set()
        with os.scandir(up.real(node.path)) as it:
            for de in it:
                n = de.name
                if n.startswith(WH_PREFIX):
                    if n != OPAQUE_NAME:
                        hidden.add(n[4:])
                    continue
                if not (
                    de.is_dir(follow_symlinks=False) or de.is_file(follow_symlinks=False) or de.is_symlink()
                ) and is_whiteout_stat(de.stat(follow_symlinks=False)):
                    hidden.add(n)
                    continue
                names[n] = -1
        if node.lower >= 0:
            for e in lo.children(node.lower):
                n = lo.name(e)
                if n not in names and n not in hidden:
                    names[n] = e
        return sorted(names.items())

    def hard_group(self, ino: int) -> list[int]:
        """The lower entries that are hard links of inode *ino*."""
        if self._groups is None:
            self._groups = lower_groups(self.lo)
        return self._groups.get(ino, [])

    def lower_links(self, ino: int) -> list[bytes]:
        """The paths where lower hard links of inode *ino* are still shown (not hidden or replaced)."""
        up = self.up
        return [
            q
            for q, e in ((self.lo.path(e), e) for e in self.hard_group(ino))
            if (up is None or up.kind(q) is None) and self.lower_at(q) == e
        ]

    def move_paths(self, src: bytes, dst: bytes, node: Node) -> None:
        """Re-path the cached nodes at *src* (and, for the directory *node*, below it) to *dst*.

        Call it before the upper's map moves.  Below a directory, the nodes are found by the
        upper's map and the lower subtree; the cost is that subtree's, or the cache's if smaller.
        """
        moved = [src]
        if node.isdir:
            moved += [p for p, _ in self.up.subtree(src)]  # type: ignore[union-attr]
            moved += self._cached_below(src, node.lower, moved[1:])
        landed = []
        for p in moved:
            n = self.at.pop(p, None)
            if n is None or p not in n.paths:
                continue
            q = dst + p[len(src) :]
            n.paths[n.paths.index(p)] = q
            landed.append((q, n))
        for q, n in landed:
            self.at[q] = n

    def _cached_below(self, path: bytes, lower: int, upper_paths: list[bytes]) -> list[bytes]:
        """The paths of cached nodes below *path*, the directory that merges lower directory *lower*
        and has *upper_paths* below it in the upper: found through the lower directories each
        cached directory merges (a redirected one's, not the one under its name)."""
        pre = path + b"/"
        budget = len(self.at)
        lo, at = self.lo, self.at
        found: list[bytes] = []
        stack = [(lower, pre)] if lower >= 0 else []
        for p in upper_paths:  # (a redirected directory's children come from elsewhere in the lowers)
            n = at.get(p)
            if n is not None and n.isdir and n.lower >= 0:
                stack.append((n.lower, p + b"/"))
        while stack:
            e, p = stack.pop()
            for c in lo.children(e):
                budget -= 1
                if budget < 0:  # the lower holds more here than the cache: look through the cache
                    return [q for q in at if q.startswith(pre)]
                q = p + lo.name(c)
                n = at.get(q)
                if n is not None:
                    found.append(q)
                    if n.isdir and n.lower >= 0:
                        stack.append((n.lower, q + b"/"))
                elif lo.is_dir(c):
                    stack.append((c, q + b"/"))
        return found

    def forget_upper(self, st: os.stat_result, ino: int) -> None:
        """The upper file *st* of inode *ino* lost a link: forget its inode with its last link."""
        if st.st_nlink <= 1 and self.umap.get(st.st_ino) == ino:
            del self.umap[st.st_ino]

    def register_new(self, path: bytes, st: os.stat_result, kind: int) -> Node:
        """A node (referenced) for the entry just created in the upper at *path*."""
        ino = NEW_INO_BASE + st.st_ino
        self.umap[st.st_ino] = ino
        self.up.set(path, kind)  # type: ignore[union-attr]
        return self.ref(Node(ino, path, -1, True, kind != K_FILE))


__all__ = ["MergedTree", "NEW_INO_BASE", "LOWER_TIMEOUT", "fuse_error"]
