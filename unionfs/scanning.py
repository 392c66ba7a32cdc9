"""The tables of a stack's layers: kept ones loaded, the others scanned, in this process and a forked
helper when a CPU is idle, and kept for the next stack that has them."""

from __future__ import annotations

import marshal
import os
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

from . import layertable, tablepack
from .layertable import LayerTable


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


def _claims(fd: int) -> Iterator[int]:
    """Layer numbers read 4 bytes at a time from a pipe shared by the processes (a 4-byte read from a
    pipe is atomic, so each number goes to exactly one of them)."""
    while len(b := os.read(fd, 4)) == 4:
        yield int.from_bytes(b, "little")


def _scan_shared(roots: Sequence[bytes], todo: list[int]) -> dict[int, LayerTable]:
    """Scan the layers *todo* in this process and a forked helper, each taking the next layer from a
    shared pipe as it finishes one.  If the helper fails, this process scans what it took."""
    tr, tw = os.pipe()
    os.write(tw, b"".join(k.to_bytes(4, "little") for k in todo[:8192]))  # <= 32 KiB: never blocks
    os.close(tw)
    rr, rw = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        pid = -1
    if pid == 0:  # the helper: scan, send, exit without running the parent's cleanup
        code = 1
        try:
            os.close(rr)
            mine = {k: layertable.scan(roots[k]).state() for k in _claims(tr)}
            with os.fdopen(rw, "wb") as f:
                f.write(marshal.dumps(mine))
            code = 0
        finally:
            os._exit(code)
    os.close(rw)
    got: dict[int, LayerTable] = {}
    try:
        got = {k: layertable.scan(roots[k]) for k in _claims(tr)}
        if pid > 0:
            with os.fdopen(rr, "rb") as f:
                rr = -1
                data = f.read()
            _, status = os.waitpid(pid, 0)
            pid = -1
            if status == 0 and data:
                got.update((k, LayerTable(*s)) for k, s in marshal.loads(data).items())
    finally:
        os.close(tr)
        if rr >= 0:
            os.close(rr)
        if pid > 0:  # interrupted: do not leave the helper behind
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    for k in todo:
        if k not in got:  # the helper failed, or more layers than the pipe took
            got[k] = layertable.scan(roots[k])
    return got


def layer_tables(
    roots: Sequence[bytes],
    table_dir: Path | Sequence[Path | None] | None = None,
    keys: Sequence[bytes] | None = None,
    jobs: int | None = None,
) -> list[LayerTable]:
    """The table of each layer at *roots*: loaded from *table_dir* (one for all, or one per layer;
    None: not kept) where one was saved under its key (*keys*, from :func:`layer_keys`; needed
    with *table_dir*), else scanned, with a forked helper if *jobs* >= 2 (default: if a CPU is
    idle) and more than one layer is missing, and saved there."""
    dirs = [table_dir] * len(roots) if table_dir is None or isinstance(table_dir, Path) else list(table_dir)
    groups: dict[str, list[int]] = {}
    for k, d in enumerate(dirs):
        if d is not None and keys is not None:
            groups.setdefault(os.fspath(d), []).append(k)
    tables: list[LayerTable | None] = [None] * len(roots)
    for where, ks in groups.items():
        for k, t in zip(ks, tablepack.load(where, [roots[k] for k in ks], [keys[k] for k in ks]), strict=True):
            tables[k] = t
    todo = [k for k, t in enumerate(tables) if t is None]
    if len(todo) > 1 and (jobs if jobs is not None else 1 + _spare_cpus()) >= 2:
        scanned = _scan_shared(roots, todo)
    else:
        scanned = {k: layertable.scan(roots[k]) for k in todo}
    for where, ks in groups.items():
        new = [(roots[k], keys[k], scanned[k]) for k in ks if k in scanned]  # type: ignore[index]
        try:
            tablepack.save(where, new, os.path.isdir)  # (and drop the layers gone: a stat each, beside a scan)
        except OSError:
            pass  # a cache that cannot be written only costs the next build a scan
    for k, t in scanned.items():
        tables[k] = t
    return tables  # type: ignore[return-value]
