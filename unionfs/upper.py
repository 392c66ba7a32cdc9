"""The container layer (upper directory): in-memory state, copy-up, whiteouts and opaque markers.

Upper format (same as kernel overlayfs, so an upper can be inspected or mounted by the kernel):
whiteouts are char devices 0/0 (``.wh.NAME`` files when mknod is impossible or
``FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT`` is set), opaque directories carry
``trusted.overlay.opaque=y`` (``.wh..wh..opq`` in ``.wh.`` mode), a directory renamed away from
its lower path carries ``trusted.overlay.redirect=LOWERPATH`` (``user.overlay.redirect`` rootless).
Temporary files live in the work directory (``WORK/strata``) when it shares the upper's
filesystem, else in the target directory under a hidden ``.wh..strata-tmp-*`` name.  There too
``WORK/strata/index/VIEW-INO`` links each copied-up lower hard link, as overlayfs's index=on keeps
its ``WORK/index``: the other links of that inode stay lower, and are served from it.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import struct
from collections.abc import Iterator

from .kindmap import KindMap
from .longpath import fit
from .whiteout import (
    OPAQUE_NAME,
    REDIRECT_XATTRS,
    WH_PREFIX,
    WhiteoutWriter,
    is_whiteout_stat,
    probe_kernel_whiteouts,
    read_redirect,
    upper_is_opaque,
)

K_WH = 1  # whiteout
K_DIR = 2  # directory merging with the lower one at its path
K_OPQ = 3  # opaque directory
K_FILE = 4  # any non-directory
K_RDR = 5  # directory merging with the lower one at its redirect path
UPPER_DIRS = (K_DIR, K_OPQ, K_RDR)

TMP_PREFIX = b".wh..strata-tmp-"
ORIGIN_XATTR = b"trusted.strata.origin"  # the merged inode a copied-up entry had, and whose numbering
ORIGIN_XATTR_USER = b"user.strata.origin"
_ORIGIN = struct.Struct("<QQ")  # inode, the numbering's id (the lower view's ``view_id``)
_tmpcount = itertools.count()


class Upper:
    """The writable layer: its files on disk and an in-memory map ``path -> kind`` of its entries."""

    def __init__(self, root: str | os.PathLike, work: str | os.PathLike | None, durable: bool = True) -> None:
        self.root = os.fsencode(os.path.realpath(root))
        self.durable = durable  # copy-ups fsync their data (False: mounted volatile)
        self.claim_fd: int | None = None  # the lock that makes this mount's server its only one
        self.tmpdir: bytes | None = None
        self.links: bytes | None = None  # the index of copied-up lower hard links (see above)
        if work is not None:
            w = os.path.join(os.fsencode(os.path.realpath(work)), b"strata")
            os.makedirs(w, exist_ok=True)
            if os.stat(w).st_dev == os.stat(self.root).st_dev:
                self.tmpdir = w
                for n in os.listdir(w):
                    if n.startswith(b"tmp-"):
                        remove_any(os.path.join(w, n))
                self.links = os.path.join(w, b"index")
                os.makedirs(self.links, exist_ok=True)
        probe_in = self.tmpdir or self.root
        self.wh = WhiteoutWriter(probe_kernel_whiteouts(probe_in))
        # trusted.* needs CAP_SYS_ADMIN; without it (rootless) the user namespace holds the origin
        self.origin_xattr = ORIGIN_XATTR if os.geteuid() == 0 else ORIGIN_XATTR_USER
        self.redirect_xattr = REDIRECT_XATTRS[0] if os.geteuid() == 0 else REDIRECT_XATTRS[1]
        self.kinds = KindMap()
        self.scan()

    # -- inode origins -----------------------------------------------------------------------
    def set_origin(self, real: bytes, ino: int, view: int) -> None:
        """Record on the upper entry *real* the inode it had in the lower view *view*."""
        try:
            os.setxattr(real, self.origin_xattr, _ORIGIN.pack(ino, view), follow_symlinks=False)
        except OSError as e:
            # no xattrs on this filesystem, or user.* on a symlink or device (rootless): the inode
            # then holds for this mount only
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise

    def origin(self, real: bytes, view: int) -> int | None:
        """The inode recorded by :meth:`set_origin` for the lower view *view*, or None."""
        try:
            v = os.getxattr(real, self.origin_xattr, follow_symlinks=False)
        except OSError:
            return None
        if len(v) != _ORIGIN.size:
            return None
        ino, recorded = _ORIGIN.unpack(v)
        return ino if recorded == view else None

    def link_path(self, view: int, ino: int) -> bytes:
        """Where the index keeps the copied-up lower hard link of inode *ino* of view *view*."""
        return os.path.join(self.links, b"%016x-%x" % (view, ino))  # type: ignore[arg-type]

    def linked(self, view: int, ino: int) -> os.stat_result | None:
        """The index's copy of lower hard link *ino*, if it was copied up."""
        try:
            return os.lstat(self.link_path(view, ino))
        except FileNotFoundError:
            return None

    # -- paths ---------------------------------------------------------------------------------
    def real(self, path: bytes) -> bytes:
        """On-disk location of merged *path* (b'/...') in the upper."""
        return self.root if path == b"/" else fit(self.root + path)

    def tmp_path(self, final: bytes) -> bytes:
        n = next(_tmpcount)
        if self.tmpdir is not None:
            return os.path.join(self.tmpdir, b"tmp-%d-%d" % (os.getpid(), n))
        return os.path.join(os.path.dirname(final), TMP_PREFIX + b"%d-%d" % (os.getpid(), n))

    # -- state ---------------------------------------------------------------------------------
    def scan(self) -> None:
        """(Re)load the in-memory map from disk."""
        self.kinds = KindMap()
        self.kinds.set(b"/", K_OPQ if upper_is_opaque(self.root) else K_DIR)
        stack = [b"/"]
        while stack:
            d = stack.pop()
            real = self.real(d)
            pre = b"" if d == b"/" else d
            try:
                it = os.scandir(real)
            except OSError:
                continue
            with it:
                for de in it:
                    name = de.name
                    p = pre + b"/" + name
                    if name.startswith(WH_PREFIX):
                        if name.startswith(TMP_PREFIX):
                            remove_any(de.path)
                        elif name != OPAQUE_NAME:
                            q = pre + b"/" + name[4:]
                            if q not in self.kinds:
                                self.kinds.set(q, K_WH)
                        continue
                    st = de.stat(follow_symlinks=False)
                    if is_whiteout_stat(st):
                        self.kinds.set(p, K_WH)
                    elif stat.S_ISDIR(st.st_mode):
                        self.kinds.set(p, self._dir_kind(de.path, p))
                        stack.append(p)
                    else:
                        self.kinds.set(p, K_FILE)

    @staticmethod
    def _dir_kind(real: bytes, path: bytes) -> int:
        if upper_is_opaque(real):
            return K_OPQ
        return K_DIR if read_redirect(real, path) is None else K_RDR

    def redirect(self, path: bytes) -> bytes | None:
        """The lower path whose directory the redirected upper directory *path* merges with."""
        return read_redirect(self.real(path), path)

    def set_redirect(self, path: bytes, target: bytes) -> bool:
        """Make the upper directory *path* merge with the lower directory *target* (not the one at its
        own path); False where the upper cannot keep the xattr (the caller copies the tree up)."""
        try:
            os.setxattr(self.real(path), self.redirect_xattr, target, follow_symlinks=False)
        except OSError as e:
            if e.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.E2BIG, errno.ERANGE):
                return False
            raise
        self.kinds.set(path, K_RDR)
        return True

    def kind(self, path: bytes) -> int | None:
        return self.kinds.get(path)

    def set(self, path: bytes, kind: int) -> None:
        self.kinds.set(path, kind)

    def drop(self, path: bytes) -> None:
        self.kinds.drop(path)

    def drop_tree(self, path: bytes) -> None:
        self.kinds.drop_tree(path)

    def move_tree(self, src: bytes, dst: bytes) -> None:
        """Re-key *src* and everything below it to *dst* (after a rename on disk)."""
        self.kinds.move_tree(src, dst)

    def subtree(self, path: bytes) -> Iterator[tuple[bytes, int]]:
        """The entries below *path* (costs what is below it)."""
        return self.kinds.subtree(path)

    # -- markers -------------------------------------------------------------------------------
    def add_whiteout(self, path: bytes) -> None:
        parent, name = _split(path)
        self.wh.whiteout(self.real(parent), name)
        self.kinds.set(path, K_WH)

    def clear_whiteout(self, path: bytes) -> None:
        """Remove a whiteout recorded at *path* (no-op if none)."""
        if self.kinds.get(path) == K_WH:
            parent, name = _split(path)
            self.wh.remove_whiteout(self.real(parent), name)
            self.kinds.drop(path)

    def make_opaque(self, path: bytes) -> None:
        self.wh.make_opaque(self.real(path))
        self.kinds.set(path, K_OPQ)

    def clear_markers(self, path: bytes) -> None:
        """Remove whiteouts/opaque markers inside the upper dir *path* (which must hold nothing else)."""
        real = self.real(path)
        for n in os.listdir(real):
            p = os.path.join(real, n)
            st = os.lstat(p)
            if n.startswith(WH_PREFIX) or is_whiteout_stat(st):
                os.unlink(p)
        kind = self.kinds.get(path)
        self.kinds.drop_tree(path)
        if kind is not None:
            self.kinds.set(path, kind)


def _split(path: bytes) -> tuple[bytes, bytes]:
    parent, _, name = path.rpartition(b"/")
    return parent or b"/", name


def remove_any(p: bytes) -> None:
    """Remove a file or a directory tree, if it is there (cleanup: errors are not the caller's)."""
    try:
        if os.path.isdir(p) and not os.path.islink(p):
            import shutil

            shutil.rmtree(p, ignore_errors=True)
        else:
            os.unlink(p)
    except OSError:
        pass
