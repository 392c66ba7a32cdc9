"""pyfuse3 operations of the union filesystem.

The class translates FUSE requests into lookups in the lower view (an :class:`~unionfs.index.Index`
or a :class:`~unionfs.probe.ProbeLower`) and the :class:`~unionfs.upper.Upper` layer; both are
handed in, so tests can drive the operations without mounting.

Inodes: a lower entry's inode is its index inode (stable across mounts); a copied-up entry keeps
the inode it had; new upper entries get inodes from ``NEW_INO_BASE`` upwards.  ``Node`` objects are
only a cache of what the kernel references: all persistent state lives in ``Upper.kinds`` (which
paths the upper holds) and ``umap`` (upper st_ino -> inode).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyfuse3

if TYPE_CHECKING:
    import trio
from .upper import K_DIR, K_FILE, K_OPQ, K_WH, Upper, copy_dir_meta, copy_node
from .whiteout import OPAQUE_NAME, WH_PREFIX, is_private_xattr, is_whiteout_stat

NEW_INO_BASE = 1 << 32
LOWER_TIMEOUT = 60.0
UPPER_TIMEOUT = 1.0
LOWER_ATTR_CACHE = 200_000  # entries; about 40 MB at most
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

# Kernel-cached listings, skipped opens and fallocate need the pyfuse3 that scripts/setup.sh
# builds with scripts/pyfuse3.patch; with a stock pyfuse3 all of it goes the long way (or fails).
PATCHED_PYFUSE3 = getattr(pyfuse3, "STRATA_PATCH_LEVEL", 0) >= 2
LOWER_FDS = 256  # lower files kept open for reads on a read-only mount


@functools.cache
def _libc():
    """libc through ctypes, loaded when a write first needs it (ctypes costs every mount ~2.5 ms)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return libc


def _raise_errno() -> None:
    import ctypes

    e = ctypes.get_errno()
    raise OSError(e, os.strerror(e))


def renameat2(src: bytes, dst: bytes, flags: int) -> None:
    """renameat2(2) (os.rename has no flags)."""
    if _libc().renameat2(-100, src, -100, dst, flags) != 0:
        _raise_errno()


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with its mode (os.posix_fallocate has none)."""
    if _libc().fallocate(fd, mode, offset, length) != 0:
        _raise_errno()


def _join(parent: bytes, name: bytes) -> bytes:
    return b"/" + name if parent == b"/" else parent + b"/" + name


def _dirname(path: bytes) -> bytes:
    return path.rpartition(b"/")[0] or b"/"


log = logging.getLogger(__name__)


def _fuse_errors(fn: Callable) -> Callable:
    """Turn OSError into FUSEError with the same errno, and any other exception (a bug) into EIO.

    pyfuse3 stops its main loop on an exception that is not a FUSEError, which would kill the
    whole mount; a bug in one request must only fail that request.
    """

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kw: Any) -> Any:
        try:
            return await fn(*args, **kw)
        except pyfuse3.FUSEError:
            raise
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception:
            log.exception("%s failed", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def _err(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


class Node:
    """What the kernel knows as one inode."""

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


class UnionOperations(pyfuse3.Operations):
    """The merged view of a lower view and an optional upper layer."""

    def __init__(self, lower: Any, upper: Upper | None) -> None:
        super().__init__()
        self.lo = lower
        self.up = upper
        root_kind = upper.kind(b"/") if upper else None
        root = Node(pyfuse3.ROOT_INODE, b"/", -1 if root_kind == K_OPQ else 0, upper is not None, True)
        root.nlookup = 1
        self.nodes: dict[int, Node] = {root.ino: root}
        self.umap: dict[int, int] = {}
        if upper is not None:
            self.umap[os.lstat(upper.root).st_ino] = root.ino
        self.next_ino = max(NEW_INO_BASE, self.lo.count + 2)
        self.dirs: dict[int, list] = {}
        self.next_dh = 1
        self.locks: dict[int, trio.Lock] = {}
        self._groups: dict[int, list[int]] | None = None
        self._lattr: dict[int, pyfuse3.EntryAttributes] = {}
        # Nothing under a read-only mount changes, so open/opendir answer ENOSYS: the kernel then
        # stops sending OPEN, OPENDIR and RELEASE, caches file data and listings itself, and reads
        # and listings arrive with the inode number as handle.
        self.no_open = upper is None and PATCHED_PYFUSE3
        self.fds: dict[int, int] = {}  # no_open: inode -> fd of the lower file serving it

    # ------------------------------------------------------------------------------ helpers
    def _node(self, ino: int) -> Node:
        n = self.nodes.get(ino)
        if n is None:
            raise _err(errno.ENOENT)
        return n

    def _rw(self) -> Upper:
        if self.up is None:
            raise _err(errno.EROFS)
        return self.up

    @staticmethod
    def _check_name(name: bytes) -> None:
        if name.startswith(WH_PREFIX):
            raise _err(errno.EINVAL)

    def _new_ino(self) -> int:
        self.next_ino += 1
        return self.next_ino

    def _ref(self, node: Node) -> Node:
        cur = self.nodes.setdefault(node.ino, node)
        if cur is not node:
            for p in node.paths:
                cur.add_path(p)
            cur.upper, cur.lower = node.upper, node.lower
        cur.nlookup += 1
        return cur

    def _lower_child(self, parent: Node, name: bytes) -> int:
        return self.lo.lookup(parent.lower, name) if parent.lower >= 0 else -1

    def _lower_at(self, path: bytes) -> int:
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
                if k in (K_WH, K_FILE, K_OPQ):
                    return -1
                if e >= 0 and not self.lo.is_dir(e):
                    return -1
        return e

    def _resolve(self, parent: Node, name: bytes, lo: int | None = None) -> tuple[Node, os.stat_result | None]:
        """The node at *name* in directory *parent* (not yet referenced) or ENOENT."""
        if name.startswith(WH_PREFIX):
            raise _err(errno.ENOENT)
        path = _join(parent.path, name)
        k = self.up.kind(path) if self.up is not None else None
        if k == K_WH:
            raise _err(errno.ENOENT)
        if lo is None:
            lo = self._lower_child(parent, name)
        if k is None:
            if lo < 0:
                raise _err(errno.ENOENT)
            ino = self.lo.ino(lo)
            node = self.nodes.get(ino)
            if node is None:
                return Node(ino, path, lo, False, self.lo.is_dir(lo)), None
            node.add_path(path)
            return node, None
        try:
            st = os.lstat(self.up.real(path))
        except FileNotFoundError:
            raise _err(errno.ENOENT) from None
        isdir = stat.S_ISDIR(st.st_mode)
        ino = self.umap.get(st.st_ino)
        if ino is None:
            if (
                lo >= 0
                and self.lo.is_dir(lo) == isdir
                and (isdir or self.lo.stat(lo)[1] == 1)
                and self.lo.ino(lo) not in self.nodes
            ):
                ino = self.lo.ino(lo)
            else:
                ino = self._new_ino()
            self.umap[st.st_ino] = ino
        lower = lo if (isdir and k == K_DIR and lo >= 0 and self.lo.is_dir(lo)) else (-1 if isdir else lo)
        node = self.nodes.get(ino)
        if node is None:
            return Node(ino, path, lower, True, isdir), st
        node.add_path(path)
        node.upper = True
        node.lower = lower
        return node, st

    def _attr(self, node: Node, st: os.stat_result | None = None) -> pyfuse3.EntryAttributes:
        if not node.upper:
            return self._lower_attr(node.lower)
        if st is None:
            try:
                st = os.lstat(self.up.real(node.path))  # type: ignore[union-attr]
            except FileNotFoundError:
                raise _err(errno.ENOENT) from None
        a = pyfuse3.EntryAttributes()
        a.st_mode, a.st_nlink, a.st_uid, a.st_gid = st.st_mode, st.st_nlink, st.st_uid, st.st_gid
        a.st_rdev, a.st_size, a.st_blocks = st.st_rdev, st.st_size, st.st_blocks
        a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
        a.attr_timeout = UPPER_TIMEOUT
        if node.isdir and node.lower >= 0:
            a.st_nlink = 1  # merged: the subdirectory count is unknown (as overlayfs; find -noleaf)
        a.entry_timeout = LOWER_TIMEOUT
        a.st_ino = node.ino
        a.st_blksize = 4096
        return a

    def _lower_attr(self, e: int) -> pyfuse3.EntryAttributes:
        """Attributes of lower entry *e*, built once: lower entries never change (callers must not mutate)."""
        a = self._lattr.get(e)
        if a is not None:
            return a
        if len(self._lattr) >= LOWER_ATTR_CACHE:
            self._lattr.clear()
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
        a.st_ino = self.lo.ino(e)
        a.st_blksize = 4096
        self._lattr[e] = a
        return a

    def _real(self, node: Node) -> bytes:
        if node.upper:
            return self.up.real(node.path)  # type: ignore[union-attr]
        return self.lo.real_path(node.lower)

    def _listing(self, node: Node) -> list[tuple[bytes, int]]:
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

    # -- upper-side preparation ---------------------------------------------------------------
    def _ensure_dir_path(self, path: bytes) -> None:
        up = self._rw()
        if up.kind(path) in (K_DIR, K_OPQ):
            return
        self._ensure_dir_path(_dirname(path))
        e = self._lower_at(path)
        real = up.real(path)
        try:
            os.mkdir(real, 0o700)
        except FileExistsError:
            pass
        if e >= 0:
            src = self.lo.real_path(e)
            copy_dir_meta(src, real, os.lstat(src))
        up.set(path, K_DIR)
        if e >= 0:
            ino = self.lo.ino(e)
            self.umap[os.lstat(real).st_ino] = ino
            n = self.nodes.get(ino)
            if n is not None:
                n.upper = True

    def _ensure_dir(self, node: Node) -> None:
        self._ensure_dir_path(node.path)
        node.upper = True

    def _hard_group(self, entry: int) -> list[int]:
        if self._groups is None:
            groups: dict[int, list[int]] = {}
            lo = self.lo
            meta = getattr(lo, "meta", None)
            if meta is not None:  # Index: scan the nlink column with array slicing
                w = len(meta) // lo.count
                candidates = [i for i, n in enumerate(meta[1::w]) if n > 1]
            else:
                candidates = range(lo.count)
            for i in candidates:
                s = lo.stat(i)
                if s[1] > 1 and not stat.S_ISDIR(s[0]):
                    groups.setdefault(lo.ino(i), []).append(i)
            self._groups = groups
        return self._groups.get(self.lo.ino(entry), [])

    async def _copy_up(self, node: Node, data: bool = True) -> None:
        """Copy a lower non-directory into the upper (data in a worker thread), keeping its inode.

        *data* False skips the contents (the caller truncates the file anyway).
        """
        if node.upper:
            return
        up = self._rw()
        import trio  # only where a request waits: a read-only server never loads trio

        lock = self.locks.setdefault(node.ino, trio.Lock())
        async with lock:
            if node.upper:
                return
            src = self.lo.real_path(node.lower)
            st = os.lstat(src)
            self._ensure_dir_path(_dirname(node.path))
            tmp = up.tmp_path(up.real(node.path))
            await trio.to_thread.run_sync(copy_node, src, tmp, st, data)
            path = node.path
            if up.kind(path) is not None:  # deleted or replaced while copying
                os.unlink(tmp)
                node.upper = True
                return
            self._ensure_dir_path(_dirname(path))
            dst = up.real(path)
            os.rename(tmp, dst)
            up.set(path, K_FILE)
            self.umap[os.lstat(dst).st_ino] = node.ino
            node.upper = True
            if st.st_nlink > 1:
                self._link_up_group(node, dst)
        self.locks.pop(node.ino, None)

    def _link_up_group(self, node: Node, dst: bytes) -> None:
        """Hard-link the other visible lower links of a copied-up file, preserving their identity."""
        up = self.up
        assert up is not None
        for e in self._hard_group(node.lower):
            q = self.lo.path(e)
            if q in node.paths[-1:] or up.kind(q) is not None or self._lower_at(q) != e:
                continue
            self._ensure_dir_path(_dirname(q))
            os.link(dst, up.real(q))
            up.set(q, K_FILE)
            node.paths.insert(0, q)

    async def _materialize(self, node: Node) -> None:
        """Copy a directory's whole merged subtree into the upper and make it opaque."""
        up = self._rw()
        if node.upper and node.lower < 0:
            return
        self._ensure_dir(node)
        for name, e in self._listing(node):
            child, _ = self._resolve(node, name, e if e >= 0 else None)
            if child.isdir:
                await self._materialize(child)
            elif not child.upper:
                await self._copy_up(child)
        up.make_opaque(node.path)
        node.lower = -1

    def _move_paths(self, src: bytes, dst: bytes) -> None:
        """Rename *src* (and everything below it) to *dst* in the cached nodes."""
        pre = src + b"/"
        for n in self.nodes.values():
            changed = False
            for i, p in enumerate(n.paths):
                if p == src:
                    n.paths[i] = dst
                    changed = True
                elif p.startswith(pre):
                    n.paths[i] = dst + p[len(src) :]
                    changed = True
                    n.upper = True
                    if n.isdir:
                        n.lower = -1
            if changed:
                n.add_path(n.paths[-1])

    def _owner(self, parent: Node, ctx: pyfuse3.RequestContext, mode: int) -> tuple[int, int, int]:
        """uid, gid and mode for a new entry (setgid directories pass their group on)."""
        pa = self._attr(parent)
        gid = ctx.gid
        if pa.st_mode & stat.S_ISGID:
            gid = pa.st_gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        return ctx.uid, gid, mode

    def _prepare_new(self, parent_inode: int, name: bytes) -> tuple[Node, bytes, bool]:
        """Checks for creating *name*; returns (parent, path, whether a whiteout was replaced)."""
        up = self._rw()
        self._check_name(name)
        parent = self._node(parent_inode)
        try:
            self._resolve(parent, name)
        except pyfuse3.FUSEError:
            pass
        else:
            raise _err(errno.EEXIST)
        self._ensure_dir(parent)
        path = _join(parent.path, name)
        had_wh = up.kind(path) == K_WH
        up.clear_whiteout(path)
        return parent, path, had_wh

    def _register_new(self, path: bytes, st: os.stat_result, kind: int) -> Node:
        ino = self._new_ino()
        self.umap[st.st_ino] = ino
        self.up.set(path, kind)  # type: ignore[union-attr]
        return self._ref(Node(ino, path, -1, True, kind != K_FILE))

    # ------------------------------------------------------------------------------ lookups
    @_fuse_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        try:
            node, st = self._resolve(self._node(parent_inode), name)
        except pyfuse3.FUSEError as e:
            if e.errno != errno.ENOENT:
                raise
            # A negative entry the kernel may cache: lowers never change, and the upper changes
            # only through this mount, whose creates replace the cached miss.
            miss = pyfuse3.EntryAttributes()
            miss.st_ino = 0
            miss.entry_timeout = LOWER_TIMEOUT
            return miss
        attr = self._attr(node, st)
        self._ref(node)
        return attr

    @_fuse_errors
    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            node = self.nodes.get(ino)
            if node is None:
                continue
            node.nlookup -= n
            if node.nlookup <= 0 and ino != pyfuse3.ROOT_INODE:
                del self.nodes[ino]
                fd = self.fds.pop(ino, None)
                if fd is not None:
                    os.close(fd)

    @_fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attr(self._node(inode))

    @_fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return os.readlink(self._real(self._node(inode)))

    @_fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int | pyfuse3.FileInfo:
        node = self._node(inode)
        if self.no_open:
            raise _err(errno.ENOSYS)
        self.next_dh += 1
        self.dirs[self.next_dh] = [node, None]
        if PATCHED_PYFUSE3:
            # Lower listings never change, and every change to the upper goes through this mount,
            # where the kernel drops the cached listing of each directory it changes.
            return pyfuse3.FileInfo(fh=self.next_dh, keep_cache=True, cache_readdir=True)
        return self.next_dh

    @_fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        d = self.dirs.get(fh)
        if d is None and self.no_open:  # *fh* is the directory's inode
            if len(self.dirs) >= 1024:  # listings of a read-only mount: only a cache
                self.dirs.clear()
            d = self.dirs[fh] = [self._node(fh), None]
        elif d is None:
            raise _err(errno.EBADF)
        node = d[0]
        if start_id == 0 or d[1] is None:
            d[1] = self._listing(node)
        listing = d[1]
        if start_id == 0 and not pyfuse3.readdir_reply(token, b".", self._attr(node), 1):
            return
        if start_id <= 1 and not pyfuse3.readdir_reply(token, b"..", self._parent_attr(node), 2):
            return
        for i in range(max(0, start_id - 2), len(listing)):
            name, e = listing[i]
            try:
                child, st = self._resolve(node, name, e if e >= 0 else None)
                attr = self._attr(child, st)
            except pyfuse3.FUSEError:
                continue
            if not pyfuse3.readdir_reply(token, name, attr, i + 3):
                break
            self._ref(child)

    def _parent_attr(self, node: Node) -> pyfuse3.EntryAttributes:
        """Attributes of the directory containing *node* (for the '..' entry; no lookup count)."""
        cur = self.nodes[pyfuse3.ROOT_INODE]
        parent = _dirname(node.path)
        if parent != b"/" and node.path != b"/":
            try:
                for comp in parent[1:].split(b"/"):
                    cur = self._resolve(cur, comp)[0]
            except pyfuse3.FUSEError:
                cur = node
        return self._attr(cur)

    @_fuse_errors
    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    @_fuse_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    @_fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        root = self.up.root if self.up is not None else (self.lo.lowers[0] if self.lo.lowers else b"/")
        s = os.statvfs(root)
        r = pyfuse3.StatvfsData()
        for f in (
            "f_bsize",
            "f_frsize",
            "f_blocks",
            "f_bfree",
            "f_bavail",
            "f_files",
            "f_ffree",
            "f_favail",
            "f_namemax",
        ):
            setattr(r, f, getattr(s, f))
        return r

    # ------------------------------------------------------------------------------ files
    @_fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if self.no_open:
            raise _err(errno.ENOSYS)
        write = (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC
        if write:
            self._rw()
            await self._copy_up(node, data=not flags & os.O_TRUNC)
        fl = flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_APPEND)
        fd = os.open(self._real(node), fl | os.O_NOFOLLOW) if node.upper else self._open_lower(node, fl)
        return pyfuse3.FileInfo(fh=fd, keep_cache=not node.upper)

    def _open_lower(self, node: Node, flags: int) -> int:
        try:  # reading must not touch the (shared, immutable) lower file's atime
            return os.open(self._real(node), flags | os.O_NOFOLLOW | os.O_NOATIME)
        except PermissionError:
            return os.open(self._real(node), flags | os.O_NOFOLLOW)

    def _lower_fd(self, ino: int) -> int:
        """no_open: a descriptor of the lower file serving *ino*, kept open until forget or evicted."""
        fd = self.fds.get(ino)
        if fd is None:
            if len(self.fds) >= LOWER_FDS:
                os.close(self.fds.pop(next(iter(self.fds))))
            fd = self.fds[ino] = self._open_lower(self._node(ino), os.O_RDONLY)
        return fd

    @_fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(self._lower_fd(fh) if self.no_open else fh, size, off)

    @_fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        if self.no_open:  # the mount is read-only; *fh* would be an inode, not a descriptor
            raise _err(errno.EROFS)
        return os.pwrite(fh, buf, off)

    @_fuse_errors
    async def release(self, fh: int) -> None:
        if not self.no_open:  # (never sent for files the kernel opened without us)
            os.close(fh)

    @_fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        if self.no_open:  # nothing written, nothing to sync
            return
        import trio

        await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, fh)

    @_fuse_errors
    async def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        # The kernel passes only handles opened for writing, so *fh* is a file of the upper layer.
        self._rw()
        import trio

        await trio.to_thread.run_sync(fallocate, fh, mode, offset, length)

    @_fuse_errors
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent, path, _ = self._prepare_new(parent_inode, name)
        uid, gid, mode = self._owner(parent, ctx, mode)
        real = self.up.real(path)  # type: ignore[union-attr]
        fl = (flags & ~(os.O_APPEND | os.O_NOCTTY)) | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open(real, fl, 0o600)
        os.fchown(fd, uid, gid)
        os.fchmod(fd, stat.S_IMODE(mode))
        st = os.fstat(fd)
        node = self._register_new(path, st, K_FILE)
        return pyfuse3.FileInfo(fh=fd), self._attr(node, st)

    @_fuse_errors
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if stat.S_ISCHR(mode) and rdev == 0:
            raise _err(errno.EPERM)
        parent, path, _ = self._prepare_new(parent_inode, name)
        uid, gid, mode = self._owner(parent, ctx, mode)
        real = self.up.real(path)  # type: ignore[union-attr]
        os.mknod(real, stat.S_IFMT(mode) | 0o600, rdev)
        os.chown(real, uid, gid)
        os.chmod(real, stat.S_IMODE(mode))
        st = os.lstat(real)
        return self._attr(self._register_new(path, st, K_FILE), st)

    @_fuse_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent, path, had_wh = self._prepare_new(parent_inode, name)
        uid, gid, mode = self._owner(parent, ctx, mode | stat.S_IFDIR)
        up = self.up
        assert up is not None
        real = up.real(path)
        os.mkdir(real, 0o700)
        os.chown(real, uid, gid)
        os.chmod(real, stat.S_IMODE(mode))
        kind = K_DIR
        if had_wh:
            up.make_opaque(path)
            kind = K_OPQ
        st = os.lstat(real)
        return self._attr(self._register_new(path, st, kind), st)

    @_fuse_errors
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent, path, _ = self._prepare_new(parent_inode, name)
        uid, gid, _m = self._owner(parent, ctx, stat.S_IFLNK)
        real = self.up.real(path)  # type: ignore[union-attr]
        os.symlink(target, real)
        os.chown(real, uid, gid, follow_symlinks=False)
        st = os.lstat(real)
        return self._attr(self._register_new(path, st, K_FILE), st)

    @_fuse_errors
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        up = self._rw()
        node = self._node(inode)
        if node.isdir:
            raise _err(errno.EPERM)
        await self._copy_up(node)
        _parent, path, _ = self._prepare_new(new_parent_inode, new_name)
        os.link(up.real(node.path), up.real(path))
        up.set(path, K_FILE)
        node.add_path(path)
        self._ref(node)
        return self._attr(node)

    @_fuse_errors
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        up = self._rw()
        node = self._node(inode)
        if node.isdir:
            self._ensure_dir(node)
        else:
            await self._copy_up(node)
        real = up.real(node.path)
        if fields.update_size:
            if fh is not None:
                os.ftruncate(fh, attr.st_size)
            else:
                os.truncate(real, attr.st_size)
        if fields.update_uid or fields.update_gid:
            os.chown(
                real,
                attr.st_uid if fields.update_uid else -1,
                attr.st_gid if fields.update_gid else -1,
                follow_symlinks=False,
            )
        if fields.update_mode and not stat.S_ISLNK(os.lstat(real).st_mode):
            os.chmod(real, stat.S_IMODE(attr.st_mode))
        if fields.update_atime or fields.update_mtime:
            st = os.lstat(real)
            at = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
            mt = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
            os.utime(real, ns=(at, mt), follow_symlinks=False)
        return self._attr(node)

    # ------------------------------------------------------------------------------ removal
    def _forget_upper(self, st: os.stat_result, ino: int) -> None:
        if st.st_nlink <= 1 and self.umap.get(st.st_ino) == ino:
            del self.umap[st.st_ino]

    @_fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        up = self._rw()
        parent = self._node(parent_inode)
        node, _ = self._resolve(parent, name)
        if node.isdir:
            raise _err(errno.EISDIR)
        path = _join(parent.path, name)
        below = self._lower_child(parent, name) >= 0
        if not node.upper and self.lo.stat(node.lower)[1] > 1:
            # a lower hard link: copy the inode up with all its visible links first, so the links
            # that remain show the right nlink (as overlayfs with index=on does)
            await self._copy_up(node)
        self._ensure_dir(parent)
        if up.kind(path) == K_FILE:
            real = up.real(path)
            st = os.lstat(real)
            os.unlink(real)
            up.drop(path)
            self._forget_upper(st, node.ino)
        if below:
            up.add_whiteout(path)
        node.remove_path(path)

    @_fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        up = self._rw()
        parent = self._node(parent_inode)
        node, _ = self._resolve(parent, name)
        if not node.isdir:
            raise _err(errno.ENOTDIR)
        if self._listing(node):
            raise _err(errno.ENOTEMPTY)
        path = _join(parent.path, name)
        below = self._lower_child(parent, name) >= 0
        self._ensure_dir(parent)
        if up.kind(path) in (K_DIR, K_OPQ):
            real = up.real(path)
            up.clear_markers(path)
            for n in os.listdir(real):  # e.g. an opaque marker file
                os.unlink(os.path.join(real, n))
            st = os.lstat(real)
            os.rmdir(real)
            up.drop_tree(path)
            self.umap.pop(st.st_ino, None)
        if below:
            up.add_whiteout(path)

    # ------------------------------------------------------------------------------ rename
    async def _to_upper(self, node: Node) -> None:
        if node.isdir:
            await self._materialize(node)
        else:
            await self._copy_up(node)

    @_fuse_errors
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        up = self._rw()
        self._check_name(name_new)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise _err(errno.EINVAL)
        po, pn = self._node(parent_inode_old), self._node(parent_inode_new)
        src, _ = self._resolve(po, name_old)
        try:
            dst: Node | None = self._resolve(pn, name_new)[0]
        except pyfuse3.FUSEError:
            dst = None
        spath, dpath = _join(po.path, name_old), _join(pn.path, name_new)
        if spath == dpath:
            return
        if dpath.startswith(spath + b"/") or (flags & RENAME_EXCHANGE and spath.startswith(dpath + b"/")):
            raise _err(errno.EINVAL)
        if flags & RENAME_EXCHANGE:
            if dst is None:
                raise _err(errno.ENOENT)
            await self._exchange(po, name_old, src, pn, name_new, dst)
            return
        if dst is not None:
            if flags & RENAME_NOREPLACE:
                raise _err(errno.EEXIST)
            if dst.ino == src.ino:
                return
            if src.isdir and not dst.isdir:
                raise _err(errno.ENOTDIR)
            if not src.isdir and dst.isdir:
                raise _err(errno.EISDIR)
            if dst.isdir and self._listing(dst):
                raise _err(errno.ENOTEMPTY)
        await self._to_upper(src)
        spath = _join(po.path, name_old)
        self._ensure_dir(pn)
        self._ensure_dir(po)
        s_below = self._lower_child(po, name_old) >= 0
        d_below = self._lower_child(pn, name_new) >= 0
        dst_st = None
        if dst is not None and up.kind(dpath) in (K_DIR, K_OPQ, K_FILE):
            if dst.isdir:
                up.clear_markers(dpath)
            dst_st = os.lstat(up.real(dpath))
        else:
            up.clear_whiteout(dpath)
        os.rename(up.real(spath), up.real(dpath))
        if src.isdir:
            up.move_tree(spath, dpath)
            if d_below and up.kind(dpath) != K_OPQ:
                up.make_opaque(dpath)
        else:
            up.drop(spath)
            up.set(dpath, K_FILE)
        if s_below:
            up.add_whiteout(spath)
        if dst is not None:
            dst.remove_path(dpath)
            if dst_st is not None:
                self._forget_upper(dst_st, dst.ino)
        self._move_paths(spath, dpath)
        src.add_path(dpath)
        if src.isdir:
            src.lower = -1

    async def _exchange(self, po: Node, name_old: bytes, src: Node, pn: Node, name_new: bytes, dst: Node) -> None:
        up = self._rw()
        await self._to_upper(src)
        await self._to_upper(dst)
        self._ensure_dir(po)
        self._ensure_dir(pn)
        spath, dpath = _join(po.path, name_old), _join(pn.path, name_new)
        s_below = self._lower_child(po, name_old) >= 0
        d_below = self._lower_child(pn, name_new) >= 0
        renameat2(up.real(spath), up.real(dpath), RENAME_EXCHANGE)
        tmp = b"\0exchange"
        up.move_tree(spath, tmp)
        up.move_tree(dpath, spath)
        up.move_tree(tmp, dpath)
        self._move_paths(spath, tmp)
        self._move_paths(dpath, spath)
        self._move_paths(tmp, dpath)
        if src.isdir and d_below and up.kind(dpath) != K_OPQ:
            up.make_opaque(dpath)
        if dst.isdir and s_below and up.kind(spath) != K_OPQ:
            up.make_opaque(spath)
        for n in (src, dst):
            if n.isdir:
                n.lower = -1

    # ------------------------------------------------------------------------------ xattrs
    @_fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if is_private_xattr(name):
            raise _err(errno.ENODATA)
        return os.getxattr(self._real(self._node(inode)), name, follow_symlinks=False)

    @_fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        names = os.listxattr(self._real(self._node(inode)), follow_symlinks=False)
        return [n.encode() for n in names if not is_private_xattr(n.encode())]

    async def _xattr_prepare(self, inode: int) -> bytes:
        up = self._rw()
        node = self._node(inode)
        if node.isdir:
            self._ensure_dir(node)
        else:
            await self._copy_up(node)
        return up.real(node.path)

    @_fuse_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._rw()
        if is_private_xattr(name):
            raise _err(errno.EPERM)
        real = await self._xattr_prepare(inode)
        os.setxattr(real, name, value, follow_symlinks=False)

    @_fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._rw()
        if is_private_xattr(name):
            raise _err(errno.ENODATA)
        os.getxattr(self._real(self._node(inode)), name, follow_symlinks=False)
        real = await self._xattr_prepare(inode)
        os.removexattr(real, name, follow_symlinks=False)
