"""rename(2) and renameat2(2)'s RENAME_EXCHANGE over the merged tree.

The handler first brings what moves into the upper (the one place a rename waits); everything
below runs after that, without awaiting, so each decision is taken on the state as it is when
the rename happens.
"""

from __future__ import annotations

import errno
import os

from . import longpath
from .copyup import CopyUp
from .libc import RENAME_EXCHANGE, RENAME_NOREPLACE, renameat2
from .merged import MergedTree, fuse_error
from .node import Node, join
from .upper import K_DIR, K_FILE, K_RDR, UPPER_DIRS


def in_upper(t: MergedTree, node: Node) -> bool:
    """Whether *node* can move within the upper as it is (a directory: if it merges with no lower
    directory, or with one by a redirect, which moves with it)."""
    if not node.isdir:  # (a copied-up hard link may still be shown at a lower path)
        return node.upper and t.rw().kind(node.path) is not None
    return node.upper and (node.lower < 0 or t.rw().kind(node.path) == K_RDR)


def lower_link(t: MergedTree, node: Node | None) -> bool:
    """Whether *node* is a lower hard link not yet copied up: replacing one of its links changes
    the link count the others show, which only the upper's copy can keep (so it is copied up)."""
    return node is not None and not node.upper and not node.isdir and t.lower_attr(node.lower).st_nlink > 1


def check(
    t: MergedTree, po: Node, name_old: bytes, src: Node, pn: Node, name_new: bytes, dst: Node | None, flags: int
) -> bool:
    """The errors of a rename, as rename(2) orders them; False if it changes nothing."""
    spath, dpath = join(po.path, name_old), join(pn.path, name_new)
    if spath == dpath:
        return False
    if dpath.startswith(spath + b"/") or (flags & RENAME_EXCHANGE and spath.startswith(dpath + b"/")):
        raise fuse_error(errno.EINVAL)
    if flags & RENAME_EXCHANGE:
        if dst is None:
            raise fuse_error(errno.ENOENT)
        return True
    if dst is not None:
        if flags & RENAME_NOREPLACE:
            raise fuse_error(errno.EEXIST)
        if dst.ino == src.ino:
            return False
        if src.isdir and not dst.isdir:
            raise fuse_error(errno.ENOTDIR)
        if not src.isdir and dst.isdir:
            raise fuse_error(errno.EISDIR)
        if dst.isdir and t.listing(dst):
            raise fuse_error(errno.ENOTEMPTY)
    return True


def rename(
    t: MergedTree, cu: CopyUp, po: Node, name_old: bytes, src: Node, pn: Node, name_new: bytes, dst: Node | None
) -> None:
    """Move *src* (in the upper already) over *dst* (or to a free name)."""
    up = t.rw()
    spath, dpath = join(po.path, name_old), join(pn.path, name_new)
    cu.ensure_dir(pn)
    cu.ensure_dir(po)
    s_below = t.lower_child(po, name_old) >= 0
    d_below = t.lower_child(pn, name_new) >= 0
    dst_st = None
    if dst is not None and up.kind(dpath) in (*UPPER_DIRS, K_FILE):
        if dst.isdir:
            up.clear_markers(dpath)
        dst_st = os.lstat(up.real(dpath))
    else:
        up.clear_whiteout(dpath)
    os.rename(up.real(spath), up.real(dpath))
    longpath.forget()
    if dst is not None:
        t.remove_path(dst, dpath)
        if dst_st is not None:
            t.forget_upper(dst_st, dst.ino)
    t.move_paths(spath, dpath, src)
    if spath in src.paths:  # (a node the kernel does not hold: not in the path index)
        src.remove_path(spath)
        src.add_path(dpath)
    if src.isdir:
        up.move_tree(spath, dpath)
        _hide_below(t, dpath, src, d_below)
    else:
        up.drop(spath)
        up.set(dpath, K_FILE)
    if s_below:
        up.add_whiteout(spath)


def exchange(
    t: MergedTree, cu: CopyUp, po: Node, name_old: bytes, src: Node, pn: Node, name_new: bytes, dst: Node
) -> None:
    """Swap *src* and *dst* (both in the upper already)."""
    up = t.rw()
    cu.ensure_dir(po)
    cu.ensure_dir(pn)
    spath, dpath = join(po.path, name_old), join(pn.path, name_new)
    s_below = t.lower_child(po, name_old) >= 0
    d_below = t.lower_child(pn, name_new) >= 0
    renameat2(up.real(spath), up.real(dpath), RENAME_EXCHANGE)
    longpath.forget()
    tmp = b"\0exchange"
    for a, b, node in ((spath, tmp, src), (dpath, spath, dst), (tmp, dpath, src)):
        t.move_paths(a, b, node)
        up.move_tree(a, b)
    if src.isdir:
        _hide_below(t, dpath, src, d_below)
    if dst.isdir:
        _hide_below(t, spath, dst, s_below)


def _hide_below(t: MergedTree, path: bytes, node: Node, below: bool) -> None:
    """The directory *node* just moved to *path*: make it hide the lower directory there, unless it
    merges with its own by a redirect."""
    up = t.rw()
    if below and up.kind(path) == K_DIR:
        up.make_opaque(path)
        node.lower = -1


__all__ = ["check", "exchange", "in_upper", "lower_link", "rename"]
