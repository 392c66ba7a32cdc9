"""pyfuse3 operations of the union filesystem: each handler translates one FUSE request.

What a name resolves to, and the inodes, live in :class:`~unionfs.merged.MergedTree`; bringing
lower entries up before they change in :class:`~unionfs.copyup.CopyUp`.  Both are built from the
lower view (an :class:`~unionfs.index.Index` or a :class:`~unionfs.probe.ProbeLower`) and the
:class:`~unionfs.upper.Upper` handed in, so tests can drive the operations without mounting.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections.abc import Callable
from typing import Any

import pyfuse3

from . import longpath, tasks
from . import rename as renames
from .copyup import CopyUp
from .libc import RENAME_EXCHANGE, RENAME_NOREPLACE, fallocate
from .merged import LOWER_TIMEOUT, MergedTree, fuse_error
from .node import Node, join
from .passthrough import Passthrough
from .upper import K_DIR, K_FILE, K_OPQ, K_WH, UPPER_DIRS, Upper
from .whiteout import WH_PREFIX, is_private_xattr

# Kernel-cached listings, skipped opens and fallocate need the pyfuse3 that scripts/setup.sh
# builds with scripts/pyfuse3.patch; with a stock pyfuse3 all of it goes the long way (or fails).
PATCHED_PYFUSE3 = getattr(pyfuse3, "STRATA_PATCH_LEVEL", 0) >= 2
PLAIN_READDIR = getattr(pyfuse3, "STRATA_PATCH_LEVEL", 0) >= 5
LOWER_FDS = 256  # lower files kept open for reads on a read-only mount
NAME_MAX = 255  # as ext4, xfs, btrfs and tmpfs: a longer name is ENAMETOOLONG

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


def _acl_changed(inode: int, name: bytes) -> None:
    """An access ACL sets the mode bits too: the kernel's cached mode, which its permission checks
    read, must go."""
    if name == b"system.posix_acl_access":
        _attr_changed(inode)


def _attr_changed(inode: int) -> None:
    """Drop the kernel's cached attributes of *inode* (attributes only: nothing that waits on the
    locks of the request being served)."""
    pyfuse3.invalidate_inode(inode, attr_only=True)


def _nofollow(at: bytes | int) -> dict[str, bool]:
    """The keyword that keeps a path call on a symlink itself (descriptors take none)."""
    return {"follow_symlinks": False} if isinstance(at, bytes) else {}


class UnionOperations(pyfuse3.Operations):
    """The merged view of a lower view and an optional upper layer."""

    def __init__(self, lower: Any, upper: Upper | None, passthrough: bool = False) -> None:
        super().__init__()
        self.t = MergedTree(lower, upper)
        self.cu = CopyUp(self.t)
        self.lo = lower
        self.up = upper
        self.dirs: dict[int, list] = {}
        self.next_dh = 1
        # Nothing under a read-only mount changes, so open/opendir answer ENOSYS: the kernel then
        # stops sending OPEN, OPENDIR and RELEASE, caches file data and listings itself, and reads
        # and listings arrive with the inode number as handle.
        self.no_open = upper is None and PATCHED_PYFUSE3
        self.fds: dict[int, int] = {}  # no_open: inode -> fd of the lower file serving it
        self.handles: dict[int, Node] = {}  # open file handle (a descriptor) -> its node
        # file data of a writable mount's opens goes straight to the kernel where it can
        self.pt = Passthrough(passthrough and not self.no_open)
        self.enable_passthrough = self.pt.wanted  # (pyfuse3 asks the kernel for it at INIT)
        # names-only listings (ls, find -name, globs) come as plain READDIRs: no node, no attributes
        self.enable_readdirplus_auto = PLAIN_READDIR

    def init(self) -> None:
        """The session is up: the kernel can now be told what its caches hold no more."""
        self.cu.changed = _attr_changed

    @property
    def nodes(self) -> dict[int, Node]:
        return self.t.nodes

    @staticmethod
    def _check_name(name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise fuse_error(errno.ENAMETOOLONG)
        if name.startswith(WH_PREFIX):
            raise fuse_error(errno.EINVAL)

    def _where(self, node: Node) -> bytes | int:
        """Where system calls reach *node*: its path in its layer or, once unlinked, a descriptor."""
        if node.paths:
            return self.t.real(node)
        if node.fds:
            return node.fds[0]
        raise fuse_error(errno.ENOENT)

    def _hold(self, node: Node, fd: int, keep_cache: bool = True) -> pyfuse3.FileInfo:
        """Record *fd* as an open handle of *node* (it keeps an unlinked node reachable)."""
        backing_id = self.pt.attach(node.ino, fd, node.upper, len(node.fds))
        node.fds.append(fd)
        self.handles[fd] = node
        if backing_id:
            return pyfuse3.FileInfo(fh=fd, keep_cache=False, backing_id=backing_id)
        return pyfuse3.FileInfo(fh=fd, keep_cache=keep_cache)

    def _owner(self, parent: Node, ctx: pyfuse3.RequestContext, mode: int) -> tuple[int, int, int]:
        """uid, gid and mode for a new entry (setgid directories pass their group on)."""
        pa = self.t.attr(parent)
        gid = ctx.gid
        if pa.st_mode & stat.S_ISGID:
            gid = pa.st_gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        return ctx.uid, gid, mode

    def _prepare_new(self, parent_inode: int, name: bytes) -> tuple[Node, bytes, bool]:
        """Checks for creating *name*; returns (parent, path, whether a whiteout was replaced)."""
        up = self.t.rw()
        self._check_name(name)
        parent = self.t.node(parent_inode)
        try:
            self.t.resolve(parent, name)
        except pyfuse3.FUSEError:
            pass
        else:
            raise fuse_error(errno.EEXIST)
        self.cu.ensure_dir(parent)
        path = join(parent.path, name)
        had_wh = up.kind(path) == K_WH
        up.clear_whiteout(path)
        return parent, path, had_wh

    # ------------------------------------------------------------------------------ lookups
    @_fuse_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if len(name) > NAME_MAX:
            raise fuse_error(errno.ENAMETOOLONG)
        try:
            node, st = self.t.resolve(self.t.node(parent_inode), name)
        except pyfuse3.FUSEError as e:
            if e.errno != errno.ENOENT:
                raise
            # A negative entry the kernel may cache: lowers never change, and the upper changes
            # only through this mount, whose creates replace the cached miss.
            miss = pyfuse3.EntryAttributes()
            miss.st_ino = 0
            miss.entry_timeout = LOWER_TIMEOUT
            return miss
        attr = self.t.attr(node, st)
        self.t.ref(node)
        return attr

    @_fuse_errors
    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            node = self.nodes.get(ino)
            if node is None:
                continue
            node.nlookup -= n
            if node.nlookup <= 0 and ino != pyfuse3.ROOT_INODE:
                self.t.drop(node)
                fd = self.fds.pop(ino, None)
                if fd is not None:
                    os.close(fd)

    @_fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.t.attr(self.t.node(inode))

    @_fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return os.readlink(self.t.real(self.t.node(inode)))

    @_fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int | pyfuse3.FileInfo:
        node = self.t.node(inode)
        if self.no_open:
            raise fuse_error(errno.ENOSYS)
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
            d = self.dirs[fh] = [self.t.node(fh), None]
        elif d is None:
            raise fuse_error(errno.EBADF)
        node = d[0]
        if start_id == 0 or d[1] is None:
            d[1] = self.t.listing(node)
        listing = d[1]
        if not getattr(token, "plus", True):
            return self._readdir_plain(node, listing, start_id, token)
        if start_id == 0 and not pyfuse3.readdir_reply(token, b".", self.t.attr(node), 1):
            return
        if start_id <= 1 and not pyfuse3.readdir_reply(token, b"..", self.t.parent_attr(node), 2):
            return
        for i in range(max(0, start_id - 2), len(listing)):
            name, e = listing[i]
            try:
                child, st = self.t.resolve(node, name, e if e >= 0 else None)
                attr = self.t.attr(child, st)
            except pyfuse3.FUSEError:
                continue
            if not pyfuse3.readdir_reply(token, name, attr, i + 3):
                break
            self.t.ref(child)

    def _readdir_plain(self, node: Node, listing: list[tuple[bytes, int]], start_id: int, token: Any) -> None:
        """A plain READDIR: each entry's name, inode number and type, as a lookup would report them;
        no node is made and no lookup counted (the kernel asks for attributes by lookups, if at all)."""
        reply, lo, up = pyfuse3.readdir_reply_plain, self.lo, self.up
        if start_id == 0 and not reply(token, b".", self.t.attr(node).st_ino, stat.S_IFDIR, 1):
            return
        if start_id <= 1 and not reply(token, b"..", self.t.parent_attr(node).st_ino, stat.S_IFDIR, 2):
            return
        for i in range(max(0, start_id - 2), len(listing)):
            name, e = listing[i]
            if e >= 0 and (up is None or up.kind(join(node.path, name)) is None):
                ino, mode = lo.ino(e), lo.mode(e)  # a lower entry the upper does not touch: the index knows
            else:
                try:
                    child, st = self.t.resolve(node, name)
                except pyfuse3.FUSEError:
                    continue
                ino, mode = child.ino, (st.st_mode if st is not None else lo.mode(child.lower))
            if not reply(token, name, ino, mode, i + 3):
                break

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
        node = self.t.node(inode)
        if self.no_open:
            raise fuse_error(errno.ENOSYS)
        write = (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC
        if write:
            self.t.rw()
            await self.cu.copy_up(node, data=not flags & os.O_TRUNC)
        fl = flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_APPEND)
        fd = os.open(self.t.real(node), fl | os.O_NOFOLLOW) if node.upper else self._open_lower(node, fl)
        return self._hold(node, fd, keep_cache=not node.upper)

    def _open_lower(self, node: Node, flags: int) -> int:
        try:  # reading must not touch the (shared, immutable) lower file's atime
            return os.open(self.t.real(node), flags | os.O_NOFOLLOW | os.O_NOATIME)
        except PermissionError:
            return os.open(self.t.real(node), flags | os.O_NOFOLLOW)

    def _lower_fd(self, ino: int) -> int:
        """no_open: a descriptor of the lower file serving *ino*, kept open until forget or evicted."""
        fd = self.fds.get(ino)
        if fd is None:
            if len(self.fds) >= LOWER_FDS:
                os.close(self.fds.pop(next(iter(self.fds))))
            fd = self.fds[ino] = self._open_lower(self.t.node(ino), os.O_RDONLY)
        return fd

    @_fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(self._lower_fd(fh) if self.no_open else fh, size, off)

    @_fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        if self.no_open:  # the mount is read-only; *fh* would be an inode, not a descriptor
            raise fuse_error(errno.EROFS)
        return os.pwrite(fh, buf, off)

    @_fuse_errors
    async def release(self, fh: int) -> None:
        if not self.no_open:  # (never sent for files the kernel opened without us)
            node = self.handles.pop(fh, None)
            if node is not None:
                node.fds.remove(fh)
            self.pt.detach(fh)
            os.close(fh)

    @_fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        if self.no_open:  # nothing written, nothing to sync
            return
        await tasks.run_sync(os.fdatasync if datasync else os.fsync, fh)

    @_fuse_errors
    async def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        # The kernel passes only handles opened for writing, so *fh* is a file of the upper layer.
        self.t.rw()
        await tasks.run_sync(fallocate, fh, mode, offset, length)

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
        node = self.t.register_new(path, st, K_FILE)
        return self._hold(node, fd), self.t.attr(node, st)

    @_fuse_errors
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if stat.S_ISCHR(mode) and rdev == 0:
            raise fuse_error(errno.EPERM)
        parent, path, _ = self._prepare_new(parent_inode, name)
        uid, gid, mode = self._owner(parent, ctx, mode)
        real = self.up.real(path)  # type: ignore[union-attr]
        os.mknod(real, stat.S_IFMT(mode) | 0o600, rdev)
        os.chown(real, uid, gid)
        os.chmod(real, stat.S_IMODE(mode))
        st = os.lstat(real)
        return self.t.attr(self.t.register_new(path, st, K_FILE), st)

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
        return self.t.attr(self.t.register_new(path, st, kind), st)

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
        return self.t.attr(self.t.register_new(path, st, K_FILE), st)

    @_fuse_errors
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        up = self.t.rw()
        node = self.t.node(inode)
        if node.isdir:
            raise fuse_error(errno.EPERM)
        await self.cu.copy_up(node)
        _parent, path, _ = self._prepare_new(new_parent_inode, new_name)
        os.link(self.t.real(node), up.real(path))
        up.set(path, K_FILE)
        self.t.add_path(node, path)
        self.t.ref(node)
        return self.t.attr(node)

    @_fuse_errors
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        self.t.rw()
        node = self.t.node(inode)
        if node.isdir:
            self.cu.ensure_dir(node)
        elif node.paths:
            await self.cu.copy_up(node)
        elif not node.upper:  # unlinked before it was copied up: nothing left to change
            raise fuse_error(errno.ENOENT)
        at = self._where(node)
        nf = _nofollow(at)
        if fields.update_size:
            os.truncate(fh if fh is not None else at, attr.st_size)
        if fields.update_uid or fields.update_gid:
            uid = attr.st_uid if fields.update_uid else -1
            os.chown(at, uid, attr.st_gid if fields.update_gid else -1, **nf)
        if fields.update_mode and not stat.S_ISLNK(os.stat(at, **nf).st_mode):
            os.chmod(at, stat.S_IMODE(attr.st_mode))
        if fields.update_atime or fields.update_mtime:
            st = os.stat(at, **nf)
            atime = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
            mtime = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
            os.utime(at, ns=(atime, mtime), **nf)
        return self.t.attr(node)

    # ------------------------------------------------------------------------------ removal
    @_fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        up = self.t.rw()
        parent = self.t.node(parent_inode)
        node, _ = self.t.resolve(parent, name)
        if node.isdir:
            raise fuse_error(errno.EISDIR)
        if renames.lower_link(self.t, node):
            # copy the inode up first, so that the links that remain show the right nlink (as
            # overlayfs with index=on does)
            await self.cu.copy_up(node)
            node, _ = self.t.resolve(parent, name)  # (after the await: as it is now)
        path = join(parent.path, name)
        below = self.t.lower_child(parent, name) >= 0
        self.cu.ensure_dir(parent)
        if up.kind(path) == K_FILE:
            real = up.real(path)
            st = os.lstat(real)
            os.unlink(real)
            up.drop(path)
            self.t.forget_upper(st, node.ino)
        if below:
            up.add_whiteout(path)
        self.t.remove_path(node, path)

    @_fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        up = self.t.rw()
        parent = self.t.node(parent_inode)
        node, _ = self.t.resolve(parent, name)
        if not node.isdir:
            raise fuse_error(errno.ENOTDIR)
        if self.t.listing(node):
            raise fuse_error(errno.ENOTEMPTY)
        path = join(parent.path, name)
        below = self.t.lower_child(parent, name) >= 0
        self.cu.ensure_dir(parent)
        if up.kind(path) in UPPER_DIRS:
            real = up.real(path)
            up.clear_markers(path)
            for n in os.listdir(real):  # e.g. an opaque marker file
                os.unlink(os.path.join(real, n))
            st = os.lstat(real)
            os.rmdir(real)
            longpath.forget()
            up.drop_tree(path)
            self.t.umap.pop(st.st_ino, None)
        if below:
            up.add_whiteout(path)

    # ------------------------------------------------------------------------------ rename
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
        self.t.rw()
        self._check_name(name_new)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise fuse_error(errno.EINVAL)
        for _ in range(8):  # until what moves is in the upper, with no await between the checks and the move
            po, pn = self.t.node(parent_inode_old), self.t.node(parent_inode_new)
            src, _ = self.t.resolve(po, name_old)
            try:
                dst: Node | None = self.t.resolve(pn, name_new)[0]
            except pyfuse3.FUSEError:
                dst = None
            if not renames.check(self.t, po, name_old, src, pn, name_new, dst, flags):
                return
            moving = [src, dst] if flags & RENAME_EXCHANGE else [src]
            pending = [n for n in moving if n is not None and not renames.in_upper(self.t, n)]
            if not flags & RENAME_EXCHANGE and renames.lower_link(self.t, dst):
                pending.append(dst)  # type: ignore[arg-type]
            if not pending:
                break
            for n in pending:
                await self.cu.to_upper(n)
        else:  # (each round brings one more node up, or fails: only a storm of renames gets here)
            raise fuse_error(errno.EAGAIN)
        if flags & RENAME_EXCHANGE:
            renames.exchange(self.t, self.cu, po, name_old, src, pn, name_new, dst)  # type: ignore[arg-type]
        else:
            renames.rename(self.t, self.cu, po, name_old, src, pn, name_new, dst)

    # ------------------------------------------------------------------------------ xattrs
    @_fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if is_private_xattr(name):
            raise fuse_error(errno.ENODATA)
        at = self._where(self.t.node(inode))
        return os.getxattr(at, name, **_nofollow(at))

    @_fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        at = self._where(self.t.node(inode))
        names = os.listxattr(at, **_nofollow(at))
        return [n.encode() for n in names if not is_private_xattr(n.encode())]

    async def _xattr_prepare(self, inode: int) -> bytes | int:
        self.t.rw()
        node = self.t.node(inode)
        if node.isdir:
            self.cu.ensure_dir(node)
        elif node.paths and not node.upper:  # (copied up: a link the index serves is changed there,
            await self.cu.copy_up(node)  # as overlayfs changes its index's inode, linking no link)
        elif not node.upper:
            raise fuse_error(errno.ENOENT)
        return self._where(node)

    @_fuse_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.t.rw()
        if is_private_xattr(name):
            raise fuse_error(errno.EPERM)
        at = await self._xattr_prepare(inode)
        os.setxattr(at, name, value, **_nofollow(at))
        _acl_changed(inode, name)

    @_fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.t.rw()
        if is_private_xattr(name):
            raise fuse_error(errno.ENODATA)
        at = self._where(self.t.node(inode))
        os.getxattr(at, name, **_nofollow(at))
        at = await self._xattr_prepare(inode)
        os.removexattr(at, name, **_nofollow(at))
        _acl_changed(inode, name)
