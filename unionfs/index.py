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
import signal
import stat
import struct
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from itertools import accumulate, chain, repeat
from operator import add, attrgetter
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


def realpaths(paths: Iterable[str | bytes | os.PathLike]) -> list[bytes]:
    """``os.path.realpath`` of each of *paths* (as bytes), resolving each distinct parent directory
    once: realpath lstat-s every component of every path, and a stack's layers share their parent
    (1000 layers: 60 ms -> 5 ms)."""
    parents: dict[bytes, bytes] = {}
    out = []
    lstat = os.lstat
    for p in paths:
        a = os.fsencode(p)
        head, _, tail = a.rpartition(b"/")
        if not head or not tail or b"//" in a or b"/." in a or tail[:1] == b".":  # relative, "/", ".", ".."
            out.append(os.path.realpath(a))
            continue
        rhead = parents.get(head)
        if rhead is None:
            rhead = parents[head] = os.path.realpath(head)
        r = rhead + b"/" + tail if rhead != b"/" else b"/" + tail
        try:
            link = stat.S_ISLNK(lstat(r).st_mode)
        except OSError:
            link = False
        out.append(os.path.realpath(r) if link else r)
    return out


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
_IFMT = 0o170000
_IFDIR = stat.S_IFDIR
_IFCHR = stat.S_IFCHR
SPLIT_DIRS = 8  # pending directories at which the scan is shared with a second process
MIN_SPLIT_ROWS = 4000  # or when this many entries are listed (else a fork does not pay)
STAT_PIECE = 512  # entries per piece of work when the entries of known directories are stat-ed

Contrib = list[tuple[int, bytes]]  # (layer, path) of each layer's copy of a merged directory, topmost first


def _list(contrib: Contrib) -> tuple[list[bytes], list[bytes], Sequence[int], list[Contrib | None]]:
    """The visible children of a merged directory, sorted by name, without stat-ing them.

    Returns names, the directory (with a trailing slash) each comes from, layers and, for
    subdirectories, their contributors (None for the rest).  Types come from ``d_type``; opaque
    xattrs are read only where a lower layer has the directory too.
    """
    merged: dict[bytes, tuple[int, bytes, Contrib | None]] = {}
    closed: set[bytes] = set()
    last = len(contrib) - 1
    for ci, (layer, d) in enumerate(contrib):
        try:
            with os.scandir(d) as it:
                des = list(it)
        except OSError:
            des = []
        pre = d + b"/"
        whiteouts: list[bytes] = []
        opaque = False
        for de in des:
            name = de.name
            if name[:_LW] == WH_PREFIX:
                if name == OPAQUE_NAME:
                    opaque = True
                else:
                    whiteouts.append(name[_LW:])
                continue
            if name in closed:
                continue
            if de.is_dir(follow_symlinks=False):
                isdir = True
            elif de.is_file(follow_symlinks=False) or de.is_symlink():
                isdir = False
            else:  # a device, fifo or socket: only these can be a char 0/0 whiteout
                st = de.stat(follow_symlinks=False)
                if st.st_mode & _IFMT == _IFCHR and st.st_rdev == 0:
                    whiteouts.append(name)
                    continue
                isdir = False
            cur = merged.get(name)
            if cur is None:
                merged[name] = (layer, pre, [(layer, pre + name)] if isdir else None)
                if not isdir:
                    closed.add(name)
            elif isdir:
                cur[2].append((layer, pre + name))  # type: ignore[union-attr]
            else:
                closed.add(name)  # a non-directory below a directory ends the merge of that name
        closed.update(whiteouts)
        if opaque or (ci < last and has_opaque_xattr(d)):
            break
    names = sorted(merged)
    vals = [merged[n] for n in names]
    return names, [v[1] for v in vals], [v[0] for v in vals], [v[2] for v in vals]


def _children(contrib: Contrib) -> tuple[list[bytes], list[os.stat_result], Sequence[int], list[Contrib | None]]:
    """Like :func:`_list`, with lstat results instead of directories (only the winners are stat-ed)."""
    if len(contrib) > 1:
        names, pres, lays, subs = _list(contrib)
        lstat = os.lstat
        return names, [lstat(p + n) for p, n in zip(pres, names, strict=True)], lays, subs
    # the common case, one layer has this directory: listdir and one lstat per entry (which gives
    # the type too) is the cheapest
    layer, d = contrib[0]
    try:
        names = [n for n in os.listdir(d) if n[:_LW] != WH_PREFIX]  # markers hide nothing here
    except OSError:
        names = []
    names.sort()
    pre = d + b"/"
    lstat = os.lstat
    sts = [lstat(pre + n) for n in names]
    fmts = [st.st_mode & _IFMT for st in sts]
    if _IFCHR in fmts:  # kernel-form whiteouts are never shown
        keep = [k for k, st in enumerate(sts) if not (fmts[k] == _IFCHR and st.st_rdev == 0)]
        names, sts, fmts = [names[k] for k in keep], [sts[k] for k in keep], [fmts[k] for k in keep]
    subs = [[(layer, pre + n)] if f == _IFDIR else None for n, f in zip(names, fmts, strict=True)]
    return names, sts, repeat(layer, len(names)), subs  # type: ignore[return-value]


def _stat_rows(paths: list[bytes], first: int) -> tuple[array, list[tuple[int, int]]]:
    """lstat *paths* (rows *first*...): their meta rows and (row, st_ino) of non-directories with nlink > 1."""
    lstat = os.lstat
    sts = [lstat(p) for p in paths]
    meta = array("q", list(chain.from_iterable(map(_META, sts))))
    hard = [(first + k, st.st_ino) for k, st in enumerate(sts) if st.st_nlink > 1 and st.st_mode & _IFMT != _IFDIR]
    return meta, hard


class _Scan:
    """Merged directories scanned by one process, as flat columns (one row per visible entry).

    Block *b* holds one directory's children: rows ``start[b] .. start[b] + count[b]``, sorted by
    name.  ``sub`` maps the row of a subdirectory scanned here to its block; ``roots`` maps rows of
    another process's scan (subtrees handed over) to blocks here; ``pieces`` holds, by first row, the
    meta rows and hard-link candidates of handed-over stat work.
    """

    def __init__(self) -> None:
        self.names: list[bytes] = []
        self.meta = array("q")
        self.layers = array("I")
        self.start: list[int] = []
        self.count: list[int] = []
        self.dirs: list[list[int]] = []  # per block: rows of subdirectories
        self.hard: list[list[tuple[int, int]]] = []  # per block: (row, st_ino) of non-directories with nlink > 1
        self.sub: dict[int, int] = {}
        self.roots: dict[int, int] = {}
        self.pieces: dict[int, tuple[array, list[tuple[int, int]]]] = {}
        self.done: list[int] = []  # chunks taken
        self.pending: list[tuple[int, Contrib]] = []  # (row, contributors) of subdirectories to scan

    def _block(self, names: list[bytes], lays: Sequence[int], subs: list[Contrib | None]) -> int:
        first = len(self.names)
        self.start.append(first)
        self.count.append(len(names))
        self.names += names
        self.layers.extend(lays)
        new = [(r, sub) for r, sub in enumerate(subs, first) if sub is not None]
        self.dirs.append([r for r, _ in new])
        self.pending += new  # type: ignore[arg-type]
        return len(self.start) - 1

    def scan(self, contrib: Contrib) -> int:
        """Scan one merged directory into a new block (its subdirectories go to ``pending``)."""
        names, sts, lays, subs = _children(contrib)
        first = len(self.names)
        b = self._block(names, lays, subs)
        self.meta.fromlist(list(chain.from_iterable(map(_META, sts))))
        self.hard.append(
            [
                (r, st.st_ino)
                for r, (st, sub) in enumerate(zip(sts, subs, strict=True), first)
                if sub is None and st.st_nlink > 1
            ]
        )
        return b

    def list_only(self, contrib: Contrib) -> tuple[int, list[bytes]]:
        """A new block for one merged directory with its meta rows left zero; returns the block and
        the paths to stat for them."""
        names, pres, lays, subs = _list(contrib)
        b = self._block(names, lays, subs)
        self.meta.frombytes(bytes(8 * META_W * len(names)))
        self.hard.append([])
        return b, [p + n for p, n in zip(pres, names, strict=True)]

    def drain(self) -> None:
        """Scan every pending subdirectory (depth first: the order does not matter here)."""
        pending, sub, scan = self.pending, self.sub, self.scan
        while pending:
            r, c = pending.pop()
            sub[r] = scan(c)

    def take(self, chunks: list[list[tuple[bool, int, list]]], claim) -> None:
        """Do the chunks that *claim* () hands out (indices, until None); an item of a chunk is
        ``(True, row, contrib)`` (scan that subtree) or ``(False, first row, paths)`` (stat entries)."""
        while (k := claim()) is not None:
            self.done.append(k)
            for tree, r, work in chunks[k]:
                if tree:
                    self.roots[r] = self.scan(work)
                    self.drain()
                else:
                    self.pieces[r] = _stat_rows(work, r)

    def state(self) -> tuple:
        return tuple(getattr(self, f) for f in _STATE)

    @classmethod
    def from_state(cls, st: tuple) -> _Scan:
        s = cls()
        for f, v in zip(_STATE, st, strict=True):
            setattr(s, f, v)
        return s


_STATE = ("names", "meta", "layers", "start", "count", "dirs", "hard", "sub", "roots", "pieces")


def _pipe_claim(fd: int):
    """A claim function reading 4-byte chunk numbers from a pipe shared by the processes (a 4-byte
    read from a pipe is atomic, so each chunk goes to exactly one of them)."""

    def claim() -> int | None:
        b = os.read(fd, 4)
        return int.from_bytes(b, "little") if len(b) == 4 else None

    return claim


def _list_claim(ks: Iterable[int]):
    it = iter(ks)
    return lambda: next(it, None)


def _spare_cpus() -> int:
    """CPUs of ours that nothing else is running on right now (from /proc/loadavg's runnable count):
    a helper on a busy machine only adds the cost of the fork."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        with open("/proc/loadavg", "rb") as f:
            running = int(f.read().split()[3].split(b"/")[0])  # includes this process
    except (OSError, ValueError, IndexError):
        running = 1
    return max(0, cpus - running)


def _take_shared(main: _Scan, chunks: list) -> _Scan | None:
    """Do *chunks* in this process and a forked helper, both taking the next chunk from a shared pipe
    as they finish one (so a busy core gets fewer).  Returns the helper's scan, or None if it failed
    (then this process has done the rest too)."""
    import pickle

    tr, tw = os.pipe()
    os.write(tw, b"".join(k.to_bytes(4, "little") for k in range(len(chunks))))  # <= 32 KiB: never blocks
    os.close(tw)
    rr, rw = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        pid = -1
    if pid == 0:  # the helper: work, send, exit without running the parent's cleanup
        code = 1
        try:
            os.close(rr)
            mine = _Scan()
            mine.take(chunks, _pipe_claim(tr))
            with os.fdopen(rw, "wb") as f:
                pickle.dump(mine.state(), f, protocol=pickle.HIGHEST_PROTOCOL)
            code = 0
        finally:
            os._exit(code)
    os.close(rw)
    helper = None
    try:
        main.take(chunks, _pipe_claim(tr))
        if pid > 0:
            with os.fdopen(rr, "rb") as f:
                rr = -1
                data = f.read()
            _, status = os.waitpid(pid, 0)
            pid = -1
            if status == 0 and data:
                helper = _Scan.from_state(pickle.loads(data))
    finally:
        os.close(tr)
        if rr >= 0:
            os.close(rr)
        if pid > 0:  # interrupted: do not leave the helper behind
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    if helper is None:
        main.take(chunks, _list_claim(sorted(set(range(len(chunks))) - set(main.done))))
    return helper


def build_index(lowers: Sequence[str | os.PathLike], key: bytes = b"", jobs: int | None = None) -> Index:
    """Compile the merged view of *lowers* (topmost first) into an :class:`Index`.

    Two passes: the merged directories are scanned into flat per-directory blocks, then numbered
    breadth first, which only concatenates blocks.  The scan starts breadth first, only listing;
    once enough is known the rest is cut into chunks (stat the entries listed so far, scan a pending
    subtree) that this process and, if *jobs* >= 2 (default: if a CPU is idle), a forked helper take
    in turn.  The result does not depend on how the work was shared.
    """
    roots = realpaths(lowers)
    if roots:
        root_meta = list(_META(os.stat(roots[0])))
        root_meta[4] = 0
    else:
        root_meta = [stat.S_IFDIR | 0o755, 2, 0, 0, 0, 0, 0, 0, 0, 0]
    main = _Scan()
    scans = [main]
    if roots:
        # list breadth first until enough subtrees are pending; those blocks come first, so row r of
        # them is paths[r]
        main.sub[-1], paths = main.list_only(list(enumerate(roots)))
        pending, pos = main.pending, 0
        while pos < len(pending) and len(pending) - pos < SPLIT_DIRS:
            r, c = pending[pos]
            pos += 1
            main.sub[r], more = main.list_only(c)
            paths += more
        listed = len(main.start)
        rest, main.pending = pending[pos:], []
        items = [(False, k, paths[k : k + STAT_PIECE]) for k in range(0, len(paths), STAT_PIECE)]
        items += [(True, r, c) for r, c in rest]
        g = max(1, -(-len(items) // 8192))  # at most 8192 chunks (tokens in the pipe)
        chunks = [items[k : k + g] for k in range(0, len(items), g)]
        helper = None
        if (rest or len(paths) >= MIN_SPLIT_ROWS) and (jobs if jobs is not None else 1 + _spare_cpus()) >= 2:
            helper = _take_shared(main, chunks)
        else:
            main.take(chunks, _list_claim(range(len(chunks))))
        hard: list[tuple[int, int]] = []
        for s in (main, helper) if helper is not None else (main,):
            for first, (meta, h) in s.pieces.items():
                main.meta[first * META_W : first * META_W + len(meta)] = meta
                hard += h
        for r, ino in sorted(hard):
            main.hard[bisect_right(main.start, r, 0, listed) - 1].append((r, ino))
        if helper is not None:
            scans.append(helper)
    # row of a subdirectory in scan s -> (scan, block) of its children
    owner: list[dict[int, tuple[int, int]]] = [{r: (0, b) for r, b in chain(main.sub.items(), main.roots.items())}]
    if len(scans) > 1:
        owner[0].update((r, (1, b)) for r, b in scans[1].roots.items())
        owner.append({r: (1, b) for r, b in scans[1].sub.items()})
    names: list[bytes] = [b""]
    parents: list[int] = [0]
    layers = array("I", [0])
    meta = array("q", root_meta)
    firsts = [0]
    counts = [0]
    hard_rows: list[tuple[int, int]] = []
    queue: list[tuple[int, int, int]] = [(0, *owner[0][-1])] if roots else []
    for entry, si, b in queue:  # the queue grows while it is walked: breadth-first order
        s = scans[si]
        start, c = s.start[b], s.count[b]
        first = len(names)
        firsts[entry] = first
        counts[entry] = c
        end = start + c
        names += s.names[start:end]
        parents += repeat(entry, c)
        layers += s.layers[start:end]
        meta += s.meta[start * META_W : end * META_W]
        firsts += repeat(0, c)
        counts += repeat(0, c)
        delta = first - start
        own = owner[si]
        for r in s.dirs[b]:
            queue.append((r + delta, *own[r]))
        h = s.hard[b]
        if h:
            hard_rows += [(r + delta, ino) for r, ino in h]
    canon = list(range(len(names)))
    hard: dict[tuple[int, int], int] = {}
    for i, ino in hard_rows:  # ascending: the first link in breadth-first order is canonical
        canon[i] = hard.setdefault((layers[i], ino), i)
    links = array("I", chain.from_iterable(zip(parents, layers, canon, firsts, counts, strict=True)))
    name_off = array("Q", [0])
    name_off.extend(accumulate(map(len, names)))
    blob = b"".join(names)
    n = len(names)
    size = 1 << max(4, (2 * n - 1).bit_length())
    mask = size - 1
    table = [0] * size
    # hashes in C-level maps; only the probing is a Python loop
    hashes = map(_xxh, map(add, map(_le32, parents), names))
    next(hashes)  # entry 0 (the root) is never looked up by name
    i = 1
    for h in hashes:
        slot = h & mask
        while table[slot]:
            slot = (slot + 1) & mask
        i += 1
        table[slot] = i
    return Index(roots, meta, links, name_off, blob, array("I", table), key=key)


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
    for root in realpaths(lowers):
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
        name = xxhash.xxh64_hexdigest(b"\0".join(realpaths(lowers)))
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
