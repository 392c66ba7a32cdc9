"""Whiteout and opaque-directory markers, in both the OCI (".wh.") and the kernel overlayfs form.

Read side: a lower layer may use either form.  Write side: the upper layer uses the kernel form
(char device 0/0, ``trusted.overlay.opaque=y``) when ``mknod`` works, otherwise ``.wh.`` files.
"""

from __future__ import annotations

import errno
import os
import stat

WH_PREFIX = b".wh."
OPAQUE_NAME = b".wh..wh..opq"
OPAQUE_XATTRS = (b"trusted.overlay.opaque", b"user.overlay.opaque", b"user.fuseoverlayfs.opaque")
KERNEL_OPAQUE_XATTR = b"trusted.overlay.opaque"
# a directory renamed from elsewhere: its lower part is the lower directory at this path (absolute,
# or a name beside it), as overlayfs's redirect_dir=on records it
REDIRECT_XATTRS = (b"trusted.overlay.redirect", b"user.overlay.redirect")
PRIVATE_XATTR_PREFIXES = (
    b"trusted.overlay.",
    b"user.overlay.",
    b"user.fuseoverlayfs.",
    b"trusted.strata.",
    b"user.strata.",
)
DISABLE_ENV = "FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT"


def is_private_xattr(name: bytes) -> bool:
    """True for xattrs that belong to the filesystem and must never leak into the merged view."""
    return name.startswith(PRIVATE_XATTR_PREFIXES)


def is_marker_name(name: bytes) -> bool:
    """True for names reserved for OCI whiteout markers."""
    return name.startswith(WH_PREFIX)


def is_whiteout_stat(st: os.stat_result) -> bool:
    """Kernel-style whiteout: a character device with device number 0/0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_whiteout_mode(mode: int, rdev: int) -> bool:
    return stat.S_ISCHR(mode) and rdev == 0


def has_opaque_xattr(path: bytes) -> bool:
    """True if the directory at *path* carries one of the opaque xattrs set to ``y``."""
    try:
        names = os.listxattr(path, follow_symlinks=False)  # one call answers for most directories
    except OSError:
        return False
    for n in names:
        if n.encode() in OPAQUE_XATTRS:
            try:
                if os.getxattr(path, n, follow_symlinks=False) == b"y":
                    return True
            except OSError:
                pass
    return False


def read_redirect(path: bytes, own: bytes) -> bytes | None:
    """The lower path that the directory at *path* (whose own lower path is *own*) redirects to,
    made absolute, or None."""
    for n in REDIRECT_XATTRS:
        try:
            v = os.getxattr(path, n, follow_symlinks=False)
        except OSError:
            continue
        if v.startswith(b"/"):
            return v.rstrip(b"/") or b"/"
        if v and b"/" not in v:  # a name in the same parent
            parent = own.rpartition(b"/")[0]
            return parent + b"/" + v
    return None


def probe_kernel_whiteouts(workdir: bytes) -> bool:
    """Return True if char-device 0/0 whiteouts can be created in *workdir* (and are not disabled)."""
    if os.environ.get(DISABLE_ENV):
        return False
    probe = os.path.join(workdir, b".strata-whiteout-probe-%d" % os.getpid())
    try:
        os.mknod(probe, stat.S_IFCHR | 0o000, os.makedev(0, 0))
    except OSError:
        return False
    os.unlink(probe)
    return True


class WhiteoutWriter:
    """Writes whiteouts and opaque markers into the upper layer in the chosen format."""

    def __init__(self, kernel_format: bool) -> None:
        self.kernel_format = kernel_format

    def whiteout(self, parent: bytes, name: bytes) -> None:
        """Record that *name* in directory *parent* (an upper path) is deleted."""
        if self.kernel_format:
            target = os.path.join(parent, name)
            try:
                os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0))
                return
            except OSError as e:
                if e.errno == errno.EEXIST:
                    return
                if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                self.kernel_format = False
        fd = os.open(os.path.join(parent, WH_PREFIX + name), os.O_CREAT | os.O_WRONLY, 0o000)
        os.close(fd)

    def whiteout_path(self, parent: bytes, name: bytes) -> bytes | None:
        """Where an existing whiteout for *name* lives in *parent* (either format), or None."""
        try:
            st = os.lstat(os.path.join(parent, name))
            if is_whiteout_stat(st):
                return os.path.join(parent, name)
        except FileNotFoundError:
            pass
        p = os.path.join(parent, WH_PREFIX + name)
        if os.path.lexists(p):
            return p
        return None

    def remove_whiteout(self, parent: bytes, name: bytes) -> bool:
        """Delete any whiteout recorded for *name*; return True if there was one."""
        p = self.whiteout_path(parent, name)
        if p is None:
            return False
        os.unlink(p)
        return True

    def make_opaque(self, path: bytes) -> None:
        """Mark the upper directory *path* opaque (hides everything below it)."""
        if self.kernel_format:
            try:
                os.setxattr(path, KERNEL_OPAQUE_XATTR, b"y", follow_symlinks=False)
                return
            except OSError:
                pass
        fd = os.open(os.path.join(path, OPAQUE_NAME), os.O_CREAT | os.O_WRONLY, 0o000)
        os.close(fd)


def upper_is_opaque(path: bytes) -> bool:
    """True if an (upper or lower) directory is opaque in either format."""
    return os.path.lexists(os.path.join(path, OPAQUE_NAME)) or has_opaque_xattr(path)
