"""The precompiled index of the merged lower tree.

Layout (struct-of-arrays, every array a flat machine-typed buffer, mmap-able):

* entry *i* is the *i*-th path in breadth-first order, children of a directory sorted by name
  (composefs order), entry 0 is the root; the FUSE inode of entry *i* is ``canon[i] + 1``
  (``canon[i] == i`` except for hard links inside one layer, which share the first link's inode);
* ``meta``  (int64, 10 per entry): mode, nlink, uid, gid, rdev, size, atime_ns, mtime_ns, ctime_ns,
  blocks;
* ``links`` (uint32, 5 per entry): parent, layer, canon, first_child, child_count;
* ``name_off`` (uint64, n+1) and ``names`` (bytes): the entry names;
* ``table`` (uint32, power of two >= 2n): open-addressing hash table keyed by
  ``xxh64(parent_le32 + name)``, slot value = entry + 1 (0 = empty).

Whiteouts and opaque directories of the lowers are resolved at build time: the index holds only what
is visible.

Cache validity: a cache file carries a key.  ``cache_key(lowers, deep=True)`` (used for caches in the
workdir) hashes every lower's resolved path plus ``st_dev, st_ino, st_mtime_ns, st_ctime_ns`` of
every directory in every lower, so adding, removing or renaming anything in a lower (which changes a
directory's mtime) or replacing a layer invalidates it.  ``deep=False`` (used for a cache path given
by the caller, who promises immutable layers) hashes the paths and the stat of each lower's root.
In-place content changes of an existing lower file are never detected (lowers are immutable).
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from array import array
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import accumulate
from operator import attrgetter
from pathlib import Path

import xxhash

from .whiteout import OPAQUE_NAME, WH_PREFIX, has_opaque_xattr

MAGIC = b"STRIDX03"
HEADER = struct.Struct("<8sQQQQ")  # magic, n, table_size, names_len, key_len
META_W = 10
LINK_W = 5
_le32 = struct.Struct("<I").pack
_xxh = xxhash.xxh64_intdigest

Stat = tuple[int, int, int, int, int, int, int, int, int, int]


class Index:
    """Read-only view of a compiled index (built in memory or loaded from a file)."""

    def __init__(self, lowers: Sequence[bytes], meta, links, name_off, names, table, key: bytes = b"") -> None:
        self.lowers = list(lowers)
        self.meta = meta
        self.links = links
        self.name_off = name_off
        self.names = names
        self.table = table
        self.mask = len(table) - 1
        self.count = len(links) // LINK_W
        self.key = key
        self._mm: mmap.mmap | None = None

    # -- queries -------------------------------------------------------------------------------
    def name(self, i: int) -> bytes:
        return bytes(self.names[self.name_off[i] : self.name_off[i + 1]])

    def parent(self, i: int) -> int:
        return self.links[i * LINK_W]

    def layer(self, i: int) -> int:
        return self.links[i * LINK_W + 1]

    def ino(self, i: int) -> int:
        """FUSE inode number of entry *i* (stable across rebuilds of the same lowers)."""
        return self.links[i * LINK_W + 2] + 1

    def stat(self, i: int) -> Stat:
        b = i * META_W
        return tuple(self.meta[b : b + META_W])  # type: ignore[return-value]

    def mode(self, i: int) -> int:
        return self.meta[i * META_W]

    def is_dir(self, i: int) -> bool:
        return stat.S_ISDIR(self.meta[i * META_W])

    def lookup(self, parent: int, name: bytes) -> int:
        """Entry of *name* in directory entry *parent*, or -1."""
        table, mask, links = self.table, self.mask, self.links
        slot = _xxh(_le32(parent) + name) & mask
        while True:
            v = table[slot]
            if v == 0:
                return -1
            e = v - 1
            if links[e * LINK_W] == parent and e != 0 and self.name(e) == name:
                return e
            slot = (slot + 1) & mask

    def children(self, i: int) -> range:
        """Entries of the merged children of directory entry *i*, sorted by name."""
        b = i * LINK_W
        first = self.links[b + 3]
        return range(first, first + self.links[b + 4])

    def path(self, i: int) -> bytes:
        """Merged path of entry *i* ('/' for the root)."""
        parts = []
        while i != 0:
            parts.append(self.name(i))
            i = self.links[i * LINK_W]
        return b"/" + b"/".join(reversed(parts))

    def real_path(self, i: int) -> bytes:
        """Path of the file serving entry *i* inside its layer."""
        p = self.path(i)
        root = self.lowers[self.layer(i)]
        return root if p == b"/" else root + p

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write the index to *path* atomically (temp file + rename)."""
        path = Path(path)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        names = bytes(self.names)
        with open(tmp, "wb") as f:
            f.write(HEADER.pack(MAGIC, self.count, len(self.table), len(names), len(self.key)))
            f.write(self.key)
            lw = b"\0".join(self.lowers)
            f.write(struct.pack("<Q", len(lw)) + lw)
            for arr in (self.meta, self.links, self.name_off, self.table):
                _pad(f)
                f.write(memoryview(arr).cast("B"))
            f.write(names)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, expect_key: bytes | None = None) -> Index | None:
        """Map an index file; None if it is missing, corrupt or its key differs from *expect_key*."""
        try:
            with open(path, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        except (OSError, ValueError):
            return None
        try:
            magic, n, tsize, nlen, klen = HEADER.unpack_from(mm, 0)
            if magic != MAGIC:
                return None
            off = HEADER.size
            key = bytes(mm[off : off + klen])
            if expect_key is not None and key != expect_key:
                return None
            off += klen
            (lwlen,) = struct.unpack_from("<Q", mm, off)
            off += 8
            lowers = bytes(mm[off : off + lwlen]).split(b"\0")
            off += lwlen
            mv = memoryview(mm)
            arrays = []
            for fmt, cnt, width in (("q", n * META_W, 8), ("I", n * LINK_W, 4), ("Q", n + 1, 8), ("I", tsize, 4)):
                off = (off + 7) & ~7
                arrays.append(mv[off : off + cnt * width].cast(fmt))
                off += cnt * width
            names = mv[off : off + nlen]
            if len(names) != nlen:
                return None
        except (struct.error, ValueError, TypeError):
            return None
        meta, links, name_off, table = arrays
        idx = cls(lowers, meta, links, name_off, names, table, key=key)
        idx._mm = mm
        return idx


def _pad(f) -> None:
    pos = f.tell()
    if pos % 8:
        f.write(b"\0" * (8 - pos % 8))


def _fs(p: str | os.PathLike) -> bytes:
    return os.fsencode(os.path.realpath(p))


_META = attrgetter(
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


def _scan(realdir: bytes) -> tuple[list, list[bytes], bool]:
    """One layer directory: ([(name, stat, path-if-dir)], whiteout names, opaque)."""
    ents: list = []
    whiteouts: list[bytes] = []
    opaque = False
    try:
        it = os.scandir(realdir)
    except OSError:
        return ents, whiteouts, False
    with it:
        for de in it:
            name = de.name
            if name[:_LW] == WH_PREFIX:
                if name == OPAQUE_NAME:
                    opaque = True
                else:
                    whiteouts.append(name[_LW:])
                continue
            st = de.stat(follow_symlinks=False)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                ents.append((name, st, de.path))
            elif stat.S_ISCHR(mode) and st.st_rdev == 0:
                whiteouts.append(name)
            else:
                ents.append((name, st, None))
    return ents, whiteouts, opaque or has_opaque_xattr(realdir)


def build_index(lowers: Sequence[str | os.PathLike], key: bytes = b"", threads: int = 4) -> Index:
    """Compile the merged view of *lowers* (topmost first) into an :class:`Index`.

    Directory scans (scandir + lstat, which release the GIL) run ahead of the breadth-first
    numbering in a small thread pool.
    """
    roots = [_fs(p) for p in lowers]
    meta = array("q")
    links = array("I")
    names: list[bytes] = [b""]
    hard: dict[tuple[int, int], int] = {}
    if roots:
        meta.extend(_META(os.stat(roots[0])))
        meta[4] = 0
    else:
        meta.extend((stat.S_IFDIR | 0o755, 2, 0, 0, 0, 0, 0, 0, 0, 0))
    links.extend((0, 0, 0, 0, 0))
    pool = ThreadPoolExecutor(max_workers=threads) if threads > 0 else None

    def submit(d: bytes):
        if pool is None:
            return _Done(_scan(d))
        return pool.submit(_scan, d)

    # queue of (entry, [[layer, realdir, future-of-scan-or-None], ...]) in BFS order; scans are
    # submitted a bounded window ahead of the numbering
    queue: list = [(0, [[i, r, None] for i, r in enumerate(roots)])]
    qpos = subpos = 0
    window = 512 if pool is not None else 0
    meta_ext, links_ext, names_app, queue_app = meta.extend, links.extend, names.append, queue.append
    try:
        while qpos < len(queue):
            while subpos < len(queue) and subpos <= qpos + window:
                c0 = queue[subpos][1][0] if queue[subpos][1] else [0, b"", 0]
                if c0[2] is None:
                    c0[2] = submit(c0[1])
                subpos += 1
            entry, contrib = queue[qpos]
            queue[qpos] = None
            qpos += 1
            if len(contrib) == 1:
                layer, _d, fut = contrib[0]
                ents = (fut or submit(_d)).result()[0]
                ents.sort()
                children = [(n, layer, st, None if p is None else [[layer, p, None]]) for n, st, p in ents]
            else:
                merged: dict[bytes, list] = {}
                closed: set[bytes] = set()
                for layer, d, fut in contrib:
                    ents, whiteouts, opaque = (fut or submit(d)).result()
                    for name, st, p in ents:
                        if name in closed:
                            continue
                        cur = merged.get(name)
                        if cur is not None:
                            if p is not None:
                                cur[3].append([layer, p, None])
                            else:
                                closed.add(name)
                            continue
                        merged[name] = [name, layer, st, [[layer, p, None]] if p is not None else None]
                        if p is None:
                            closed.add(name)
                    closed.update(whiteouts)
                    if opaque:
                        break
                children = [tuple(merged[n]) for n in sorted(merged)]
            first = len(names)
            b = entry * LINK_W
            links[b + 3] = first
            links[b + 4] = len(children)
            i = first
            for name, layer, st, sub in children:
                names_app(name)
                m = _META(st)
                canon = i
                if sub is None and m[1] > 1:
                    canon = hard.setdefault((layer, st.st_ino), i)
                meta_ext(m)
                links_ext((entry, layer, canon, 0, 0))
                if sub is not None:
                    queue_app((i, sub))
                i += 1
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    name_off = array("Q", [0])
    name_off.extend(accumulate(map(len, names)))
    blob = b"".join(names)
    n = len(names)
    size = 1 << max(4, (2 * n - 1).bit_length())
    mask = size - 1
    table = array("I", bytes(4 * size))
    for i in range(1, n):
        slot = _xxh(_le32(links[i * LINK_W]) + names[i]) & mask
        while table[slot]:
            slot = (slot + 1) & mask
        table[slot] = i + 1
    return Index(roots, meta, links, name_off, blob, table, key=key)


class _Done:
    def __init__(self, value) -> None:
        self.value = value

    def result(self):
        return self.value


def _walk_dirs(root: bytes) -> Iterator[bytes]:
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


def cache_key(lowers: Sequence[str | os.PathLike], deep: bool = True) -> bytes:
    """Validity key of an index of *lowers* (see the module docstring)."""
    h = xxhash.xxh3_128()
    for p in lowers:
        root = _fs(p)
        h.update(root + b"\0")
        dirs = _walk_dirs(root) if deep else iter([root])
        for d in dirs:
            try:
                st = os.lstat(d)
            except OSError:
                continue
            h.update(d + struct.pack("<QQqq", st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns))
    return h.digest()


def load_or_build(
    lowers: Sequence[str | os.PathLike], cache: Path | None = None, cache_dir: Path | None = None
) -> Index:
    """Load a valid cached index or build (and cache) a new one.

    *cache*: explicit cache file (shallow key).  Otherwise, with *cache_dir*, a file named after the
    lower paths inside it (deep key).  With neither, nothing is cached.
    """
    if cache is None and cache_dir is not None:
        name = xxhash.xxh64_hexdigest(b"\0".join(_fs(p) for p in lowers))
        cache = Path(cache_dir) / f"strata-index-{name}.idx"
        key = cache_key(lowers, deep=True)
    elif cache is not None:
        key = cache_key(lowers, deep=False)
    else:
        return build_index(lowers)
    idx = Index.load(cache, expect_key=key)
    if idx is not None:
        return idx
    idx = build_index(lowers, key=key)
    try:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        idx.save(Path(cache))
    except OSError:
        pass
    return idx
