"""Unpack a layer tar into one directory, keeping the OCI whiteout markers as they are.

Whiteouts (`.wh.NAME`) and opaque markers (`.wh..wh..opq`) are written as the plain files they
are in the tar, never applied, so the union filesystem can stack the layer later. Ownership,
modes, timestamps, hard links, symlinks, device nodes, FIFOs and xattrs are preserved; whatever the
host cannot materialise is returned, so the caller can record it. Entries that would land outside
the layer (`..`, absolute paths, a write through a symlink, a hard link pointing out) are refused.
"""

from __future__ import annotations

import base64
import os
import posixpath
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .errors import InvalidInput

CHUNK = 1 << 20


@dataclass
class UnpackResult:
    size: int = 0  # bytes of regular-file content, each hard-linked inode once
    entries: int = 0
    lost: list[str] = field(default_factory=list)  # metadata the host could not materialise


def safe_name(name: str, what: str = "entry") -> str:
    """The entry's path relative to the layer root, or InvalidInput if it would escape."""
    if name.startswith("/"):
        raise InvalidInput(f"layer tar: {what} {name!r} has an absolute path")
    norm = posixpath.normpath(name)
    if norm == "." or norm == "":
        return ""
    if norm == ".." or norm.startswith("../") or "/../" in f"/{name}/":
        raise InvalidInput(f"layer tar: {what} {name!r} would land outside the layer")
    return norm


# the xattrs with which overlay filesystems mark whiteouts, opaque and renamed directories, inode
# origins: a layer tar carries its whiteouts as `.wh.` entries, never as these
_OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.", "user.fuseoverlayfs.", "trusted.strata.", "user.strata.")


def xattrs_of(member: tarfile.TarInfo) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            out[key[len("SCHILY.xattr.") :]] = value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            out[key[len("LIBARCHIVE.xattr.") :]] = base64.b64decode(value + "==")
    return out


class Unpacker:
    """Materialises tar entries one at a time into `root`; `finish` once every entry is added."""

    def __init__(self, root: Path, lowers: Iterable[Path]) -> None:
        self.root = root
        self.lowers = lowers
        self.dirs: dict[str, int] = {"": 0}  # known real directories → mtime_ns to set at the end
        self.result = UnpackResult()

    def _parent_ok(self, rel: str) -> None:
        """Make sure every parent of `rel` is a real directory inside the layer (never a symlink)."""
        parent = posixpath.dirname(rel)
        if parent in self.dirs:
            return
        self._parent_ok(parent)
        path = self.root / parent
        st = _lstat(path)
        if st is None:
            path.mkdir(mode=0o755)
            self._inherit(parent, path)
        elif not stat.S_ISDIR(st.st_mode):
            raise InvalidInput(f"layer tar: entry {rel!r} would be written through non-directory {parent!r}")
        self.dirs.setdefault(parent, -1)  # -1: keep whatever mtime the directory has

    def _inherit(self, rel: str, path: Path) -> None:
        """An implicit parent (no tar entry of its own) keeps the metadata it has in the layers below,
        as applying the tar to the lower tree would: a stacked default 0755 root dir would mask it."""
        for lower in self.lowers:
            st = _lstat(lower / rel)
            if st is None:
                continue
            if stat.S_ISDIR(st.st_mode):
                os.chown(path, st.st_uid, st.st_gid)
                os.chmod(path, stat.S_IMODE(st.st_mode))
                for key in os.listxattr(lower / rel):
                    os.setxattr(path, key, os.getxattr(lower / rel, key))
                self.dirs[rel] = st.st_mtime_ns
            return

    def _is_real_dir(self, rel: str) -> bool:
        try:
            self._parent_ok(posixpath.join(rel, "x"))
        except InvalidInput:
            return False
        return True

    def _clear(self, path: Path, keep_dir: bool) -> None:
        st = _lstat(path)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            shutil.rmtree(path)
        else:
            path.unlink()

    def add(self, m: tarfile.TarInfo, write: Callable[[BinaryIO], None] | None = None) -> None:
        """Add entry `m`; for a regular file, `write(dst)` puts its content into the new, open file."""
        rel = safe_name(m.name)
        self.result.entries += 1
        if rel == "":
            if m.isdir():
                self._meta(self.root, m, rel)
            return
        self._parent_ok(rel)
        path = self.root / rel
        self._clear(path, keep_dir=m.isdir())
        if m.isdir():
            if not path.is_dir():
                path.mkdir(mode=0o700)
            self.dirs[rel] = -1
        elif m.isreg():
            with open(path, "xb") as f:
                if write is not None:
                    write(f)
            self.result.size += m.size
        elif m.issym():
            target = m.linkname
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
            if not target.startswith("/") and (resolved == ".." or resolved.startswith("../")):
                raise InvalidInput(f"layer tar: symlink {rel!r} -> {target!r} points outside the layer")
            os.symlink(target, path)
        elif m.islnk():
            target = safe_name(m.linkname, "hard link target")
            st = _lstat(self.root / target) if self._is_real_dir(posixpath.dirname(target)) else None
            if st is None or stat.S_ISDIR(st.st_mode) or target == rel:
                raise InvalidInput(f"layer tar: hard link {rel!r} -> {m.linkname!r} has no target in the layer")
            tpath = self.root / target
            os.link(tpath, path, follow_symlinks=False)
            return  # a hard link shares its target's metadata
        elif m.ischr() or m.isblk():
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            try:
                os.mknod(path, kind | 0o600, os.makedev(m.devmajor, m.devminor))
            except PermissionError:
                self.result.lost.append(f"{rel}: device {m.devmajor}:{m.devminor} (no CAP_MKNOD)")
                return
        elif m.isfifo():
            os.mkfifo(path)
        else:
            raise InvalidInput(f"layer tar: entry {rel!r} has unsupported type {m.type!r}")
        self._meta(path, m, rel)

    def _meta(self, path: Path, m: tarfile.TarInfo, rel: str) -> None:
        try:
            os.lchown(path, m.uid, m.gid)
        except PermissionError:
            self.result.lost.append(f"{rel}: owner {m.uid}:{m.gid}")
        if not m.issym():
            os.chmod(path, m.mode & 0o7777)
        for key, value in xattrs_of(m).items():
            if key.startswith(_OVERLAY_XATTRS):  # (they would change what the stacked layers show)
                self.result.lost.append(f"{rel}: xattr {key} (an overlay filesystem's own)")
                continue
            try:
                os.setxattr(path, key, value, follow_symlinks=False)
            except OSError as e:
                self.result.lost.append(f"{rel}: xattr {key} ({e.strerror})")
        mtime_ns = int(m.mtime * 1_000_000_000)
        if m.isdir():
            self.dirs[rel] = mtime_ns  # children would bump it: set once everything is in place
        else:
            os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)

    def finish(self) -> None:
        for rel in sorted(self.dirs, key=len, reverse=True):
            if self.dirs[rel] >= 0:
                os.utime(self.root / rel, ns=(self.dirs[rel], self.dirs[rel]), follow_symlinks=False)


def unpack(stream: BinaryIO, root: Path, lowers: Iterable[Path] = ()) -> UnpackResult:
    """Unpack the (uncompressed) tar `stream` into the empty directory `root`.

    `lowers` are the directories of the layers below (topmost first; iterated again for each
    directory the tar implies without listing it, whose metadata they hold).
    """
    unpacker = Unpacker(root, lowers)
    try:
        with tarfile.open(fileobj=stream, mode="r|", errorlevel=2) as tar:  # type: ignore[call-overload]
            for member in tar:
                unpacker.add(member, _content_of(tar, member))
    except tarfile.TarError as e:
        raise InvalidInput(f"layer tar is truncated or corrupt: {e}") from None
    unpacker.finish()
    return unpacker.result


def _content_of(tar: tarfile.TarFile, m: tarfile.TarInfo) -> Callable[[BinaryIO], None]:
    def write(dst: BinaryIO) -> None:
        src = tar.extractfile(m)
        assert src is not None
        shutil.copyfileobj(src, dst, CHUNK)

    return write


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
