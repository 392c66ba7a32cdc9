"""Copy-up: bringing a lower entry into the upper layer before it changes, keeping its inode."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator

from . import tasks
from .libc import RENAME_NOREPLACE, renameat2
from .merged import MergedTree
from .node import Node, dirname
from .upper import K_DIR, K_FILE, UPPER_DIRS, remove_any
from .whiteout import is_private_xattr


def copy_xattrs(src: bytes, dst: bytes | int) -> None:
    """Copy the user-visible xattrs of *src* to *dst* (a path or a descriptor; symlinks not followed)."""
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    nofollow = {} if isinstance(dst, int) else {"follow_symlinks": False}
    for n in names:
        if is_private_xattr(n.encode()):
            continue
        try:
            os.setxattr(dst, n, os.getxattr(src, n, follow_symlinks=False), **nofollow)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.ENODATA):
                raise


def copy_data(src: bytes, dst_fd: int) -> None:
    """Copy a regular file's bytes into *dst_fd*, keeping holes (SEEK_DATA/SEEK_HOLE)."""
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    break
                raise
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            off = data
            while off < hole:
                try:
                    n = os.copy_file_range(fd, dst_fd, hole - off, off, off)
                except OSError:
                    buf = os.pread(fd, min(1 << 20, hole - off), off)
                    n = os.pwrite(dst_fd, buf, off)
                if n == 0:
                    break
                off += n
            pos = hole
        os.ftruncate(dst_fd, size)
    finally:
        os.close(fd)


def copy_node(src: bytes, dst: bytes, st: os.stat_result, data: bool = True, durable: bool = True) -> None:
    """Create *dst* as a copy of the non-directory *src* with all metadata (not atomic: *dst* is
    a temporary name that the caller renames into place).

    *data* False: a regular file is created empty (for an open with O_TRUNC).  *durable*: a regular
    file is on disk, data and metadata, before this returns (a crash after the rename must not
    leave a truncated file hiding the good lower copy).
    """
    mode = st.st_mode
    if stat.S_ISREG(mode):
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            if data:
                copy_data(src, fd)
            os.fchown(fd, st.st_uid, st.st_gid)
            os.fchmod(fd, stat.S_IMODE(mode))
            copy_xattrs(src, fd)
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        return
    if stat.S_ISLNK(mode):
        os.symlink(os.readlink(src), dst)
        os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    else:
        os.mknod(dst, mode, st.st_rdev)
        os.chown(dst, st.st_uid, st.st_gid)
        os.chmod(dst, stat.S_IMODE(mode))
    copy_xattrs(src, dst)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def copy_dir_meta(src: bytes | None, dst: bytes, st: os.stat_result | None) -> None:
    """Give the existing directory *dst* the owner, mode, xattrs and times of *src*."""
    if st is None:
        return
    os.chown(dst, st.st_uid, st.st_gid)
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    if src is not None:
        copy_xattrs(src, dst)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


class CopyUp:
    """Copies lower entries of *tree* into its upper: files with their data, directories with their
    metadata, whole subtrees for a directory rename."""

    def __init__(self, tree: MergedTree) -> None:
        self.tree = tree
        self.locks: dict[int, tasks.Lock] = {}  # inode -> the lock of a copy-up in progress
        # told the inode whose attributes a copy-up changed (its ctime, a directory's too), which
        # the kernel may hold cached from the lower entry; the server invalidates them
        self.changed: Callable[[int], None] = lambda ino: None

    def ensure_dir_path(self, path: bytes) -> None:
        """Make the upper hold directory *path* and its ancestors, each copied up atomically: made
        under a temporary name with the lower's owner, mode, xattrs, times and inode, then renamed
        into place (a crash leaves the old state or the whole directory, never a wrong one)."""
        t = self.tree
        up = t.rw()
        if up.kind(path) in UPPER_DIRS:
            return
        self.ensure_dir_path(dirname(path))
        e = t.lower_at(path)
        real = up.real(path)
        tmp = up.tmp_path(real)
        os.mkdir(tmp, 0o700)
        try:
            if e >= 0:
                src = t.lo.real_path(e)
                copy_dir_meta(src, tmp, os.lstat(src))
                if t.view_id is not None:
                    up.set_origin(tmp, t.lo.ino(e), t.view_id)
            with self._parent_times(path):
                try:
                    renameat2(tmp, real, RENAME_NOREPLACE)
                except FileExistsError:  # (an empty directory the upper's map did not know)
                    os.rmdir(tmp)
        except BaseException:
            remove_any(tmp)
            raise
        up.set(path, K_DIR)
        if e >= 0:
            ino = t.lo.ino(e)
            t.umap[os.lstat(real).st_ino] = ino
            n = t.nodes.get(ino)
            if n is not None:
                n.upper = True
                self.changed(ino)

    def ensure_dir(self, node: Node) -> None:
        self.ensure_dir_path(node.path)
        node.upper = True

    @contextlib.contextmanager
    def _parent_times(self, path: bytes) -> Iterator[None]:
        """Keep the times of *path*'s upper parent across a copy-up into it (as overlayfs does: a
        copy-up changes no directory the user sees)."""
        t = self.tree
        parent = t.up.real(dirname(path))  # type: ignore[union-attr]
        st = os.lstat(parent)
        yield
        os.utime(parent, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        node = t.at.get(dirname(path))  # (its ctime changed all the same)
        if node is not None:
            self.changed(node.ino)

    async def copy_up(self, node: Node, data: bool = True) -> None:
        """Copy a lower non-directory into the upper (data in a worker thread), keeping its inode.

        Atomic (a temporary file renamed into place) and, unless the upper is volatile, durable;
        on any error (ENOSPC) nothing is left behind.  *data* False skips the contents (the caller
        truncates the file anyway).  ENOENT if the node was unlinked while its data was copied.
        """
        if node.upper:
            self._link_up(node)
            return
        t = self.tree
        up = t.rw()
        lock = self.locks.setdefault(node.ino, tasks.Lock())
        try:
            async with lock:
                if node.upper:
                    self._link_up(node)
                    return
                src = t.lo.real_path(node.lower)
                st = os.lstat(src)
                self.ensure_dir_path(dirname(node.path))
                tmp = up.tmp_path(up.real(node.path))
                try:
                    await tasks.run_sync(copy_node, src, tmp, st, data, up.durable)
                    if t.view_id is not None:
                        up.set_origin(tmp, node.ino, t.view_id)
                    # the one await is over: decide only now, on the state as it is
                    if not node.paths or up.kind(node.path) is not None:  # unlinked or replaced meanwhile
                        raise FileNotFoundError(errno.ENOENT, "unlinked during copy-up")
                    path = node.path
                    self.ensure_dir_path(dirname(path))
                    dst = up.real(path)
                    if st.st_nlink > 1 and t.keeps_links:
                        os.link(tmp, up.link_path(t.view_id, node.ino))  # the other links are served from it
                    with self._parent_times(path):
                        os.rename(tmp, dst)
                except BaseException:
                    remove_any(tmp)
                    raise
                up.set(path, K_FILE)
                t.umap[os.lstat(dst).st_ino] = node.ino
                node.upper = True
                self.changed(node.ino)
                if st.st_nlink > 1 and not t.keeps_links:
                    self._link_up_group(node, dst)
        finally:
            if not lock.locked():
                self.locks.pop(node.ino, None)

    def _link_up(self, node: Node) -> None:
        """Give the copied-up *node* the path it was reached by in the upper too: a lower link of a
        hard-linked inode copied up through another link is linked to the index's copy (as
        overlayfs does).  Reached through a removed link's descriptor: no other link is."""
        t = self.tree
        up = t.rw()
        if node.isdir or not node.paths or not node.fresh or up.kind(node.path) is not None:
            return
        path = node.path
        self.ensure_dir_path(dirname(path))
        with self._parent_times(path):
            os.link(t.real(node), up.real(path))
        up.set(path, K_FILE)
        self.changed(node.ino)

    def _link_up_group(self, node: Node, dst: bytes) -> None:
        """Hard-link the other visible lower links of a copied-up file, preserving their identity
        (where the upper keeps no index of links)."""
        t = self.tree
        up = t.rw()
        for e in t.hard_group(node.ino):
            q = t.lo.path(e)
            if q in node.paths[-1:] or up.kind(q) is not None or t.lower_at(q) != e:
                continue
            self.ensure_dir_path(dirname(q))
            with self._parent_times(q):
                os.link(dst, up.real(q))
            up.set(q, K_FILE)
            t.add_path(node, q)
            node.paths.insert(0, node.paths.pop())  # (the path asked for stays the newest)

    def redirect(self, node: Node) -> bool:
        """Make the directory *node* movable on its own: in the upper, merging with its lower
        directory by a redirect (so that a rename moves it alone, as overlayfs's redirect_dir=on
        does).  False where the upper cannot record a redirect."""
        t = self.tree
        self.ensure_dir(node)
        return t.rw().set_redirect(node.path, t.lo.path(node.lower))

    async def materialize(self, node: Node) -> None:
        """Copy a directory's whole merged subtree into the upper and make it opaque."""
        t = self.tree
        up = t.rw()
        if node.upper and node.lower < 0:
            return
        self.ensure_dir(node)
        for name, e in t.listing(node):
            child, _ = t.resolve(node, name, e if e >= 0 else None)
            if child.isdir:
                await self.materialize(child)
            elif not child.upper:
                await self.copy_up(child)
        up.make_opaque(node.path)
        node.lower = -1

    async def to_upper(self, node: Node) -> None:
        """Bring *node* into the upper so that it can move (a directory by a redirect, or with its
        subtree where the upper keeps no redirects)."""
        if node.isdir:
            if not self.redirect(node):
                await self.materialize(node)
        else:
            await self.copy_up(node)
