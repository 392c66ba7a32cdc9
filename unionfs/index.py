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
is visible.  A build merges the layers' tables (:mod:`unionfs.layertable`), which are kept in a
``layers`` directory beside the cache file, so a stack of layers seen before is compiled without
reading them again.

Cache validity: an index file and a layer table each carry a key.  A layer's key
(``layer_key(root, deep)``) hashes its resolved path and ``st_dev, st_ino, st_mtime_ns,
st_ctime_ns`` of its root directory, and with *deep* (used for caches in the workdir) of every
directory in it, so adding, removing or renaming anything in a lower (which changes a directory's
mtime) or replacing a layer invalidates it.  Shallow keys are used for a cache path given by the
caller, who promises immutable layers.  A stack's key hashes its layers' keys, in order.
In-place content changes of an existing lower file are never detected (lowers are immutable).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
import struct
from array import array
from collections.abc import Callable, Sequence
from itertools import accumulate, chain, repeat
from operator import add
from pathlib import Path

import xxhash

from . import redirect, tablepack
from .layertable import META, META_BYTES, META_W, LayerTable, layer_key
from .longpath import fit
from .realpath import realpaths
from .scanning import layer_tables

MAGIC = b"STRIDX04"
HEADER = struct.Struct("<8sQQQQQ")  # magic, n, table_size, names_len, key_len, xxh3_64 of the rest
LINK_W = 5
TMP_MARK = ".tmp"  # an index being written: NAME.tmpPID
TABLE_DIR = "layers"  # beside an index cache file: the tables of its layers
_ROW = 1 << 32  # (layer, row) packed in one int while merging
_ROW_MASK = _ROW - 1
_le32 = struct.Struct("<I").pack
_xxh = xxhash.xxh64_intdigest

Stat = tuple[int, int, int, int, int, int, int, int, int, int]
Expand = Callable[[int, list[tuple[int, int]]], list[tuple[int, int]]]


class Index:
    """Read-only view of a compiled index (built in memory or loaded from a file)."""

    def __init__(
        self,
        lowers: Sequence[bytes],
        meta,
        links,
        name_off,
        names,
        table,
        key: bytes = b"",
        where: dict[tuple[int, int], bytes] | None = None,
    ) -> None:
        self.lowers = list(lowers)
        self.meta = meta
        self.links = links
        self.name_off = name_off
        self.names = names
        self.table = table
        self.mask = len(table) - 1
        self.count = len(links) // LINK_W
        self.key = key
        # (directory entry, layer) -> that layer's path of it, where a redirect put it elsewhere
        self.where = where or {}
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

    @property
    def view_id(self) -> int:
        """Names this index's inode numbering: the same lowers (immutable) are numbered the same by
        every index built of them, so an inode recorded in an upper under this id holds."""
        return xxhash.xxh64_intdigest(b"\0".join(self.lowers))

    def real_path(self, i: int) -> bytes:
        """Path of the file serving entry *i* inside its layer."""
        root = self.lowers[self.layer(i)]
        p = self._layer_path(i) if self.where else self.path(i)
        return root if p == b"/" else fit(root + p)

    def _layer_path(self, i: int) -> bytes:
        """Entry *i*'s path in its own layer: below the nearest ancestor that a redirect put elsewhere
        in that layer, its merged path otherwise."""
        if i == 0:
            return b"/"
        k = self.layer(i)
        parts = [self.name(i)]
        a = self.parent(i)
        while a != 0:
            t = self.where.get((a, k))
            if t is not None:
                return t.rstrip(b"/") + b"/" + b"/".join(reversed(parts))
            parts.append(self.name(a))
            a = self.parent(a)
        return b"/" + b"/".join(reversed(parts))

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write the index to *path* atomically and durably (temp file, fsync, rename), with a
        checksum of everything after the header, which :meth:`load` verifies."""
        path = Path(path)
        tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
        names = bytes(self.names)
        lw = b"\0".join(self.lowers)
        parts: list[bytes | memoryview] = [self.key, struct.pack("<Q", len(lw)) + lw]
        pos = HEADER.size + len(parts[0]) + len(parts[1])
        for arr in (self.meta, self.links, self.name_off, self.table):
            parts.append(b"\0" * (-pos % 8))
            parts.append(memoryview(arr).cast("B"))
            pos += len(parts[-2]) + len(parts[-1])
        parts.append(names)
        h = xxhash.xxh3_64()
        for p in parts:
            h.update(p)
        try:
            with open(tmp, "wb") as f:
                f.write(HEADER.pack(MAGIC, self.count, len(self.table), len(names), len(self.key), h.intdigest()))
                for p in parts:
                    f.write(p)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: Path, expect_key: bytes | None = None) -> Index | None:
        """Map an index file; None if it is missing, corrupt or its key differs from *expect_key*."""
        try:
            with open(path, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        except (OSError, ValueError):
            return None
        try:
            magic, n, tsize, nlen, klen, check = HEADER.unpack_from(mm, 0)
            if magic != MAGIC or xxhash.xxh3_64_intdigest(memoryview(mm)[HEADER.size :]) != check:
                return None  # (damaged: the caller builds it again)
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


def _fs(p: str | os.PathLike) -> bytes:
    return os.fsencode(os.path.realpath(p))


def build_index(
    lowers: Sequence[str | os.PathLike],
    key: bytes = b"",
    jobs: int | None = None,
    table_dir: Path | None = None,
) -> Index:
    """Compile the merged view of *lowers* (topmost first) into an :class:`Index`.

    The layers' tables (:func:`layer_tables`) are merged breadth first: a directory that only one
    layer has is copied from its table as a block; only directories that several layers have are
    merged (topmost wins, whiteouts and opaque directories cut off what is below).
    """
    stats: list[os.stat_result | None] = []
    roots = realpaths(lowers, stats)
    return _build(roots, stats, key, jobs, table_dir, None)


def _build(
    roots: list[bytes],
    stats: Sequence[os.stat_result | None],
    key: bytes,
    jobs: int | None,
    table_dir: Path | Sequence[Path | None] | None,
    keys: Sequence[bytes] | None,
) -> Index:
    if roots:
        root_meta = list(META(stats[0] or os.stat(roots[0])))
        root_meta[4] = 0
    else:
        root_meta = [stat.S_IFDIR | 0o755, 2, 0, 0, 0, 0, 0, 0, 0, 0]
    if table_dir is not None and keys is None:
        keys = layer_keys(roots, stats, deep=False)
    tables = layer_tables(roots, table_dir, keys, jobs)
    where: dict[tuple[int, int], bytes] = {}
    if any(t.redirects for t in tables):  # (rare: a directory renamed in a lower layer)
        typed = [t.typed() for t in tables]
        expand, where = redirect.expander(typed)
        names, meta, links, hard_rows = merge_python(typed, array("q", root_meta).tobytes(), expand)
    else:
        names, meta, links, hard_rows = merge(tables, array("q", root_meta).tobytes())
    hard: dict[tuple[int, int], int] = {}
    for i, ino in hard_rows:  # ascending: the first link in breadth-first order is canonical
        links[i * LINK_W + 2] = hard.setdefault((links[i * LINK_W + 1], ino), i)
    name_off = array("Q", [0])
    name_off.extend(accumulate(map(len, names)))
    n = len(names)
    size = 1 << max(4, (2 * n - 1).bit_length())
    table = hash_table(names, links, size)
    return Index(roots, meta, links, name_off, b"".join(names), table, key=key, where=where)


def merge_python(
    tables: Sequence[LayerTable], root_meta: bytes, expand: Expand | None = None
) -> tuple[list[bytes], array, array, list]:
    """The merged view of *tables* (topmost first) in breadth-first order: ``(names, meta, links,
    hard_rows)``, with ``canon[i] == i`` in *links* and *hard_rows* the ``(entry, st_ino)`` of the
    hard-link candidates.  The reference of the compiled :func:`merge`, and the merge of layers
    with redirected directories (*expand*: :func:`unionfs.redirect.expander`'s function, which
    then decides each directory's contributors)."""
    tables = [t.typed() for t in tables]
    names: list[bytes] = [b""]
    parents: list[int] = [0]
    layers = array("I", [0])
    meta = array("q")
    meta.frombytes(root_meta)
    firsts = [0]
    counts = [0]
    hard_rows: list[tuple[int, int]] = []
    # (entry, its contributors: (layer, directory number in that layer's table), topmost first)
    queue: list[tuple[int, list[tuple[int, int]]]] = [(0, [(k, 0) for k in range(len(tables))])] if tables else []
    for entry, contrib in queue:  # the queue grows while it is walked: breadth-first order
        if expand is not None:
            contrib = expand(entry, contrib)
        first = len(names)
        if len(contrib) == 1:
            k, d = contrib[0]
            t = tables[k]
            s = t.start[d]
            c = t.count[d]
            e = s + c
            names += t.names[s:e]
            layers.extend(repeat(k, c))
            meta.frombytes(t.meta[s * META_BYTES : e * META_BYTES])
            delta = first - s
            row_of = t.row_of
            queue += [(row_of[sd] + delta, [(k, sd)]) for sd in range(t.first_sub[d], t.first_sub[d + 1])]
            ino = t.ino
            hard_rows += [(j + delta, ino[j]) for j in range(s, e) if ino[j]]
        else:
            for i, (k, d) in enumerate(contrib):
                if expand is None and tables[k].opaque[d]:  # nothing below an opaque directory shows
                    contrib = contrib[: i + 1]
                    break
            # bottom layer up, so that dict.update (in C) lets each layer override the ones below:
            # whiteouts first remove what is below them, then the layer's entries go in; a
            # subdirectory continues the chain of the same name below only if that is a directory
            winner: dict[bytes, int] = {}  # name -> k * _ROW + row in layer k's table
            chains: dict[bytes, list[tuple[int, int]]] = {}  # name -> its contributors, bottom first
            for k, d in reversed(contrib):
                t = tables[k]
                wh = t.whiteouts.get(d)
                if wh:
                    for x in wh:
                        winner.pop(x, None)
                tnames = t.names
                for sd in range(t.first_sub[d], t.first_sub[d + 1]):
                    name = tnames[t.row_of[sd]]
                    below = winner.get(name)
                    if below is not None and tables[below >> 32].sub[below & _ROW_MASK] >= 0:
                        chains[name].append((k, sd))
                    else:
                        chains[name] = [(k, sd)]
                s = t.start[d]
                e = s + t.count[d]
                winner.update(zip(tnames[s:e], range(k * _ROW + s, k * _ROW + e), strict=True))
            items = sorted(winner.items())
            c = len(items)
            names += [name for name, _ in items]
            # the winners' rows, gathered a column at a time (list comprehensions, not one loop
            # doing everything per entry)
            ks = [v >> 32 for _, v in items]
            js = [v & _ROW_MASK for _, v in items]
            ts = [tables[k] for k in ks]
            layers.extend(ks)
            meta.frombytes(
                b"".join([t.meta[j * META_BYTES : (j + 1) * META_BYTES] for t, j in zip(ts, js, strict=True)])
            )
            for i in [i for i, (t, j) in enumerate(zip(ts, js, strict=True)) if t.sub[j] >= 0 or t.ino[j]]:
                t, j = ts[i], js[i]
                if t.sub[j] >= 0:
                    queue.append((first + i, chains[items[i][0]][::-1]))
                else:
                    hard_rows.append((first + i, t.ino[j]))
        firsts[entry] = first
        counts[entry] = c
        parents += repeat(entry, c)
        firsts += repeat(0, c)
        counts += repeat(0, c)
    links = array("I", chain.from_iterable(zip(parents, layers, range(len(names)), firsts, counts, strict=True)))
    return names, meta, links, hard_rows


def hash_table_python(names: Sequence[bytes], links: array, size: int) -> array:
    """The open-addressing table (see the module docstring) of *size* slots for entries 1 ..
    ``len(names) - 1``.  The reference of the compiled :func:`hash_table`."""
    mask = size - 1
    table = [0] * size
    # hashes in C-level maps; only the probing is a Python loop
    hashes = map(_xxh, map(add, map(_le32, links[::LINK_W]), names))
    next(hashes)  # entry 0 (the root) is never looked up by name
    i = 1
    for h in hashes:
        slot = h & mask
        while table[slot]:
            slot = (slot + 1) & mask
        i += 1
        table[slot] = i
    return array("I", table)


try:
    from ._merge import hash_table, merge
except ImportError:  # not built
    merge, hash_table = merge_python, hash_table_python


def cache_key(lowers: Sequence[str | os.PathLike], deep: bool = True) -> bytes:
    """Validity key of an index of *lowers* (see the module docstring)."""
    stats: list[os.stat_result | None] = []
    roots = realpaths(lowers, stats)
    return _stack_key(layer_keys(roots, stats, deep))


def layer_keys(
    roots: Sequence[bytes], stats: Sequence[os.stat_result | None], deep: bool | Sequence[bool]
) -> list[bytes]:
    """:func:`layer_key` of each of *roots*, resolved by :func:`realpaths` with these *stats*, deep
    for all or (a sequence) for those it says."""
    depths = [deep] * len(roots) if isinstance(deep, bool) else deep
    return [layer_key(r, d, st) for r, st, d in zip(roots, stats, depths, strict=True)]


def _stack_key(layer_keys: Sequence[bytes]) -> bytes:
    return xxhash.xxh3_128(b"".join(layer_keys)).digest()  # each layer's key covers its path


def prepare_tables(lowers: Sequence[str | os.PathLike], cache_dir: Path) -> None:
    """Scan and keep the tables of those of *lowers* not yet kept for index caches in *cache_dir*
    (with shallow keys, as ``load_or_build(lowers, cache=cache_dir / name)`` uses them), so that the
    first mount of a new stack of them merges tables instead of reading the layers."""
    stats: list[os.stat_result | None] = []
    roots = realpaths(lowers, stats)
    layer_tables(roots, Path(cache_dir) / TABLE_DIR, layer_keys(roots, stats, deep=False))


def prune_tables(cache_dir: Path) -> int:
    """Remove the layer tables kept for index caches in *cache_dir* whose layer is gone."""
    return tablepack.prune(os.fspath(Path(cache_dir) / TABLE_DIR))


def load_or_build(
    lowers: Sequence[str | os.PathLike],
    cache: Path | None = None,
    cache_dir: Path | None = None,
    resolved: Sequence[os.stat_result | None] | None = None,
    tables: Path | None = None,
    immutable: Sequence[bool] | None = None,
) -> Index:
    """Load a valid cached index or build (and cache) a new one.

    *cache*: explicit cache file (shallow keys).  Otherwise, with *cache_dir*, a file named after
    the lower paths inside it; with neither, no index is cached.  Without *cache*, keys are deep
    but for the lowers *immutable* says.  The layers' tables are kept in a ``layers`` directory
    beside the cache file, where other stacks of the same layers find them, but the tables of the
    *immutable* lowers in *tables* if given: the only tables that other mounts share, as only their
    root's identity (a shallow key) keeps them valid (a lower file changed in place changes no key).
    *resolved*: *lowers* are :func:`realpaths` already, and these their ``stats`` (a mount has just
    checked them: resolving 1000 layers again costs ~5 ms).
    """
    stats: list[os.stat_result | None]
    if resolved is not None:
        roots, stats = [os.fsencode(p) for p in lowers], list(resolved)
    else:
        stats = []
        roots = realpaths(lowers, stats)
    deep: bool | list[bool] = cache is None  # (a caller naming the cache file promises immutable lowers)
    if cache is None and cache_dir is not None:
        name = xxhash.xxh64_hexdigest(b"\0".join(roots))
        cache = Path(cache_dir) / f"strata-index-{name}.idx"
    elif cache is None and not (tables is not None and immutable and any(immutable)):
        return _build(roots, stats, b"", None, None, None)
    if deep and immutable is not None:
        deep = [not i for i in immutable]
    keys = layer_keys(roots, stats, deep)
    key = _stack_key(keys)
    idx = Index.load(cache, expect_key=key) if cache is not None else None
    if idx is not None:
        return idx
    beside = Path(cache).parent / TABLE_DIR if cache is not None else None
    where: Path | list[Path | None] | None = beside
    if tables is not None and immutable is not None:
        where = [tables if i else beside for i in immutable]
    idx = _build(roots, stats, key, None, where, keys)
    if cache is None or idx.where:
        return idx  # (the file format keeps no redirects: such a rare stack is merged at each mount)
    try:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        sweep_temporaries(Path(cache).parent)
        idx.save(Path(cache))
    except OSError:
        pass
    return idx


def sweep_temporaries(cache_dir: Path) -> None:
    """Remove the temporary files of index saves whose writer died (killed while saving)."""
    for p in cache_dir.glob(f"*.idx{TMP_MARK}*"):
        pid = p.name.rpartition(TMP_MARK)[2]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            with contextlib.suppress(OSError):
                p.unlink()
