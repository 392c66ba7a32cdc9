"""The metadata of one lower layer, scanned once and kept beside the index cache.

A stack's index is a merge of its layers' tables (as nydus merges per-layer bootstraps), so a new
stack of layers seen before is compiled without a system call per entry, and layers never seen are
scanned independently of each other (in parallel). Directory *d* of a table holds its children,
sorted by name, in rows ``start[d] .. start[d] + count[d]``; row *j* is a subdirectory if
``sub[j] >= 0`` (its directory number), and ``ino[j]`` is nonzero only for a non-directory with
more than one link (the hard-link candidates). Whiteout markers and kernel-form whiteouts are not
rows: they are each directory's ``whiteouts``, and ``.wh..wh..opq`` or an opaque xattr set
``opaque``; a directory renamed from elsewhere (a redirect xattr) has its lower path, absolute in
the layer's namespace, in ``redirects``.  Tables are kept by :mod:`unionfs.tablepack`, as :func:`encode` writes them.
"""

from __future__ import annotations

import marshal
import os
import stat
import struct
from array import array
from itertools import chain
from operator import attrgetter

import xxhash

from .whiteout import OPAQUE_NAME, WH_PREFIX, has_opaque_xattr, read_redirect

META_W = 10
META_BYTES = 8 * META_W
VERSION = 4
META = attrgetter(
    "st_mode",
    "st_nlink",
    "st_uid",
    "st_gid",
    "st_rdev",
    "st_size",
    "st_atime_ns",
    "st_mtime_ns",
    "st_ctime_ns",
    "st_blocks",
)
_LW = len(WH_PREFIX)
_IFMT = 0o170000
_IFDIR = stat.S_IFDIR
_IFCHR = stat.S_IFCHR
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_SUM = 8  # bytes of a kept table's checksum (xxh3_64 of the rest)
FD_FROM = 4  # entries from which a directory is opened to stat them relative to it (cheaper per entry)


class LayerTable:
    """Every directory of one layer: children's names, meta rows, subdirectories, whiteouts."""

    __slots__ = (
        "names",
        "meta",
        "sub",
        "ino",
        "start",
        "count",
        "first_sub",
        "row_of",
        "opaque",
        "whiteouts",
        "redirects",
    )

    def __init__(self, names, meta, sub, ino, start, count, first_sub, row_of, opaque, whiteouts, redirects) -> None:
        # the columns as any buffers (a scan's arrays or bytes, a loaded table's bytes), taken as
        # they are: the compiled merge reads them directly, and Python indexes a typed() copy
        self.names: list[bytes] = names
        self.meta = meta  # 10 int64 per row
        self.sub = sub  # int32 per row
        self.ino = ino  # uint64 per row
        self.start = start  # uint32 per directory, as are count and first_sub (one more)
        self.count = count
        # directory d's subdirectories are the directories first_sub[d] .. first_sub[d + 1] - 1 (one
        # more entry than directories), and directory s is the entry in row row_of[s] of its parent
        self.first_sub = first_sub
        self.row_of = row_of
        self.opaque: bytes = opaque
        self.whiteouts: dict[int, list[bytes]] = whiteouts
        self.redirects: dict[int, bytes] = redirects

    def typed(self) -> LayerTable:
        """This table with its columns as memoryviews of their types, for indexing in Python (meta
        as bytes: rows are copied, never read)."""

        def view(col, fmt: str) -> memoryview:
            return memoryview(col).cast("B").cast(fmt)

        return LayerTable(
            self.names,
            memoryview(self.meta).cast("B"),
            view(self.sub, "i"),
            view(self.ino, "Q"),
            view(self.start, "I"),
            view(self.count, "I"),
            view(self.first_sub, "I"),
            view(self.row_of, "I"),
            self.opaque,
            self.whiteouts,
            self.redirects,
        )

    def state(self) -> tuple:
        """A marshal-able form (also what a scanning helper process sends back): ``LayerTable(*state)``
        is the table again."""
        cols = (self.meta, self.sub, self.ino, self.start, self.count, self.first_sub, self.row_of)
        return (self.names, *map(bytes, cols), self.opaque, self.whiteouts, self.redirects)


def encode(table: LayerTable, root: bytes, key: bytes) -> bytes:
    """*table* as kept for the layer at *root* under its *key*: the root (so that tables of removed
    layers can be pruned), a checksum of the rest, and the marshalled columns."""
    body = marshal.dumps((VERSION, key, table.state()))
    return root + b"\0" + xxhash.xxh3_64_digest(body) + body


def decode(record: bytes | memoryview, root: bytes, key: bytes) -> LayerTable | None:
    """The table in *record* if it is whole and was kept for *root* under *key*, else None."""
    at = len(root) + 1
    body = record[at + _SUM :]
    if record[:at] != root + b"\0" or record[at : at + _SUM] != xxhash.xxh3_64_digest(body):
        return None  # torn or damaged: the compiled merge trusts a table's columns
    try:
        version, saved_key, st = marshal.loads(body)
    except (EOFError, ValueError, TypeError):
        return None
    if version != VERSION or saved_key != key:
        return None
    return LayerTable(*st)


def scan(root: bytes) -> LayerTable:
    """Read every directory of the layer at *root* (breadth first; directory 0 is the root)."""
    if _scan_state is None:
        return scan_python(root)
    return LayerTable(*_scan_state(root))


def scan_python(root: bytes) -> LayerTable:
    """:func:`scan` in Python: the reference of the compiled scanner, and its stand-in where that
    was not built."""
    names: list[bytes] = []
    meta = array("q")
    sub = array("i")
    ino = array("Q")
    start = array("I")
    count = array("I")
    first_sub = array("I")
    row_of = array("I", [0])
    opaque = bytearray()
    whiteouts: dict[int, list[bytes]] = {}
    redirects: dict[int, bytes] = {}
    queue = [root]
    lstat = os.lstat
    for d, path in enumerate(queue):  # grows while walked
        try:
            listed = os.listdir(path)
        except OSError:
            listed = []
        wh = [n[_LW:] for n in listed if n[:_LW] == WH_PREFIX]
        opq = False
        if wh:
            listed = [n for n in listed if n[:_LW] != WH_PREFIX]
            if OPAQUE_NAME[_LW:] in wh:
                wh.remove(OPAQUE_NAME[_LW:])
                opq = True
        listed.sort()
        pre = path + b"/"
        if len(listed) < FD_FROM:
            sts = [lstat(pre + n) for n in listed]
        else:  # relative to the directory: the kernel does not walk the whole path for each entry
            fd = os.open(path, _DIR_FLAGS)
            try:
                sts = [lstat(n, dir_fd=fd) for n in listed]
            finally:
                os.close(fd)
        fmts = [st.st_mode & _IFMT for st in sts]
        if _IFCHR in fmts:  # kernel-form whiteouts: char 0/0
            keep = []
            for k, st in enumerate(sts):
                if fmts[k] == _IFCHR and st.st_rdev == 0:
                    wh.append(listed[k])
                else:
                    keep.append(k)
            listed, sts, fmts = [listed[k] for k in keep], [sts[k] for k in keep], [fmts[k] for k in keep]
        start.append(len(names))
        count.append(len(listed))
        opaque.append(opq or has_opaque_xattr(path))
        target = read_redirect(path, path[len(root) :] or b"/")
        if target is not None:
            redirects[d] = target
        if wh:
            whiteouts[d] = wh
        first_sub.append(len(queue))
        for j, (n, f) in enumerate(zip(listed, fmts, strict=True), len(names)):
            if f == _IFDIR:
                sub.append(len(queue))
                row_of.append(j)
                queue.append(pre + n)
            else:
                sub.append(-1)
        names += listed
        meta.fromlist(list(chain.from_iterable(map(META, sts))))
        ino.fromlist([st.st_ino if st.st_nlink > 1 and f != _IFDIR else 0 for st, f in zip(sts, fmts, strict=True)])
    first_sub.append(len(queue))
    return LayerTable(names, meta, sub, ino, start, count, first_sub, row_of, bytes(opaque), whiteouts, redirects)


try:
    from ._scan import scan_state as _scan_state
except ImportError:  # not built (a source tree without setup.py run)
    _scan_state = None


def layer_key(root: bytes, deep: bool, st: os.stat_result | None = None) -> bytes:
    """Validity key of a table of *root*: its path and the identity and times of its root directory
    (*st*: its ``lstat``, if the caller has it), and with *deep* of every directory in it (anything
    added, removed or renamed changes one)."""
    h = xxhash.xxh3_128(root + b"\0")
    for d in _walk_dirs(root) if deep else (root,):
        try:
            s = st if st is not None and d == root else os.lstat(d)
        except OSError:
            continue
        h.update(d + struct.pack("<QQqq", s.st_dev, s.st_ino, s.st_mtime_ns, s.st_ctime_ns))
    return h.digest()


def _walk_dirs(root: bytes):
    stack = [root]
    while stack:
        d = stack.pop()
        yield d
        try:
            with os.scandir(d) as it:
                subs = sorted(de.path for de in it if de.is_dir(follow_symlinks=False))
        except OSError:
            continue
        stack.extend(reversed(subs))
