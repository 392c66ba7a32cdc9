"""The kept layer tables of a directory, in one append-only file with a directory of its records.

One file rather than one per layer, so that a stack of 1000 layers seen before gets its tables with
a few system calls instead of four per layer (1000 layers, warm: ~10 ms -> ~3 ms), and from a cold
page cache in one sequential read: a stack's new layers are scanned, and so appended, together.

``tables.pack`` holds a header, then records and directories, appended.  A record is a table as
:func:`unionfs.layertable.encode` writes it; a directory maps each layer root to its record's
(offset, length).  After an append the header (the current directory's offset and length, with
their checksum) is rewritten in place, so a reader sees the old directory or the new one, both
complete; readers take no lock, writers hold ``tables.lock``.  A checksum guards every directory
and record: a torn or damaged one reads as missing (its layer is scanned again), never as wrong.
When more than half of the file is dead (replaced records, earlier directories), the next write
copies the live records into a new file renamed over the old: readers that have the old one open
keep reading a consistent file.
"""

from __future__ import annotations

import fcntl
import marshal
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import xxhash

from .layertable import LayerTable, decode, encode

PACK = "tables.pack"
LOCK = "tables.lock"
MAGIC = b"STRTBL01"
HEADER = struct.Struct("<8sQQ8s")  # magic, directory offset, directory length, xxh3_64 of the two
_SUM = 8
GAP = 1 << 16  # records closer than this are read in one pread
COMPACT_FROM = 1 << 20  # dead bytes below this never trigger a rewrite

Directory = dict[bytes, tuple[int, int]]  # layer root -> (offset, length) of its record


def load(table_dir: str, roots: Sequence[bytes], keys: Sequence[bytes]) -> list[LayerTable | None]:
    """The tables kept in *table_dir* for the layers at *roots* under *keys* (None where one is
    missing, stale or damaged)."""
    try:
        fd = os.open(f"{table_dir}/{PACK}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return [None] * len(roots)
    try:
        found = _directory(fd)
        where = [found.get(r) for r in roots]
        records = _read(fd, [w for w in where if w is not None])
    except OSError:
        return [None] * len(roots)
    finally:
        os.close(fd)
    return [None if w is None else decode(records[w[0]], r, k) for w, r, k in zip(where, roots, keys, strict=True)]


def save(
    table_dir: str, tables: Iterable[tuple[bytes, bytes, LayerTable]], keep: Callable[[bytes], bool] | None = None
) -> None:
    """Keep each ``(root, key, table)`` of *tables* in *table_dir* (replacing what a root had), and
    drop the tables kept there whose root fails *keep* (if given)."""
    new = [(root, encode(t, root, key)) for root, key, t in tables]
    if new:
        os.makedirs(table_dir, exist_ok=True)
        with _locked(table_dir):
            if not os.path.exists(f"{table_dir}/{PACK}"):
                _sweep(table_dir)  # tables of an earlier format: never read again
            _update(table_dir, new, keep or (lambda root: True))


def prune(table_dir: str, keep: Callable[[bytes], bool] = os.path.isdir) -> int:
    """Drop the tables of *table_dir* whose root fails *keep* (by default: whose layer directory is
    gone), and any other file left there; returns how many were dropped."""
    if not os.path.isdir(table_dir):
        return 0
    with _locked(table_dir):
        return _sweep(table_dir) + _update(table_dir, [], keep)


def _sweep(table_dir: str) -> int:
    """Under the lock: remove the files of *table_dir* that are not the pack or its lock (tables
    of earlier formats, temp files of writers that died); returns how many."""
    removed = 0
    for name in os.listdir(table_dir):
        if name not in (PACK, LOCK):
            try:
                os.unlink(f"{table_dir}/{name}")
                removed += 1
            except OSError:
                pass
    return removed


def _update(table_dir: str, new: list[tuple[bytes, bytes]], keep: Callable[[bytes], bool]) -> int:
    """Under the lock: add the records *new* (root, record) and drop the tables whose root fails
    *keep*, by appending them and a new directory, or, once more than half of the file would be
    dead, by rewriting it with the live records only; returns how many tables were dropped."""
    path = f"{table_dir}/{PACK}"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if new else 0), 0o644)
    except FileNotFoundError:
        return 0
    try:
        size = os.fstat(fd).st_size
        replaced = {r for r, _ in new}
        old = _directory(fd) if size else {}
        kept = {r: w for r, w in old.items() if r not in replaced and keep(r)}
        dropped = len(old) - len(kept) - len(replaced & old.keys())
        if not new and not dropped:
            return 0
        live = sum(n for _, n in kept.values())
        if size >= HEADER.size and size - HEADER.size - live < max(live, COMPACT_FROM):
            blob = bytearray()
            for root, rec in new:
                kept[root] = (size + len(blob), len(rec))
                blob += rec
            _finish(fd, kept, blob, size)
        else:
            _rewrite(table_dir, fd, kept, new)
        return dropped
    finally:
        os.close(fd)


def roots(table_dir: str) -> list[bytes]:
    """The layer roots that have a table kept in *table_dir*."""
    try:
        fd = os.open(f"{table_dir}/{PACK}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        return list(_directory(fd))
    finally:
        os.close(fd)


def _directory(fd: int) -> Directory:
    """The current directory of the pack open at *fd* (empty if there is none, or it is damaged)."""
    for _ in range(3):  # a header read while a writer rewrites it may be torn: read it again
        head = os.pread(fd, HEADER.size, 0)
        if len(head) != HEADER.size:
            return {}
        magic, off, n, check = HEADER.unpack(head)
        if magic == MAGIC and check == xxhash.xxh3_64_digest(head[8:24]) and n >= _SUM:
            break
    else:
        return {}
    blob = os.pread(fd, n, off)
    if len(blob) != n or blob[:_SUM] != xxhash.xxh3_64_digest(memoryview(blob)[_SUM:]):
        return {}
    try:
        found = marshal.loads(memoryview(blob)[_SUM:])
    except (EOFError, ValueError, TypeError):
        return {}
    return found if isinstance(found, dict) else {}


def _read(fd: int, where: list[tuple[int, int]]) -> dict[int, memoryview]:
    """The records at *where* ((offset, length) pairs), by offset: neighbours are read together, in
    file order (one sequential read for a stack saved at once).  A record cut short (a pack
    damaged at its end) comes back short and fails its checksum."""
    out: dict[int, memoryview] = {}
    for run in _runs(sorted(where)):
        start = run[0][0]
        data = memoryview(os.pread(fd, run[-1][0] + run[-1][1] - start, start))
        for off, n in run:
            out[off] = data[off - start : off - start + n]
    return out


def _runs(where: list[tuple[int, int]]) -> Iterator[list[tuple[int, int]]]:
    run: list[tuple[int, int]] = []
    for off, n in where:
        if run and off - (run[-1][0] + run[-1][1]) > GAP:
            yield run
            run = []
        run.append((off, n))
    if run:
        yield run


def _finish(fd: int, found: Directory, blob: bytearray, at: int) -> None:
    """Write *blob* (records) and then *found* at offset *at*, and point the header at *found*."""
    body = marshal.dumps(found)
    directory = xxhash.xxh3_64_digest(body) + body
    off = at + len(blob)
    blob += directory
    os.pwrite(fd, blob, at)
    span = struct.pack("<QQ", off, len(directory))
    os.pwrite(fd, HEADER.pack(MAGIC, off, len(directory), xxhash.xxh3_64_digest(span)), 0)


def _rewrite(table_dir: str, src: int, kept: Directory, new: list[tuple[bytes, bytes]]) -> None:
    """Replace the pack open at *src* with one holding its records *kept* and the records *new*
    (under the lock).  The kept ones are copied a record at a time: a store's tables can be
    hundreds of MB, and a rewrite should not hold them all in memory."""
    path = f"{table_dir}/{PACK}"
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        found: Directory = {}
        at = HEADER.size
        for root, (off, n) in kept.items():
            rec = os.pread(src, n, off)  # (short only if the pack was cut: then it fails its checksum)
            found[root] = (at, len(rec))
            at += os.pwrite(fd, rec, at)
        blob = bytearray()
        for root, rec in new:
            found[root] = (at + len(blob), len(rec))
            blob += rec
        _finish(fd, found, blob, at)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)


@contextmanager
def _locked(table_dir: str) -> Iterator[None]:
    fd = os.open(f"{table_dir}/{LOCK}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
