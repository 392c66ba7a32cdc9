"""strata's index alone, timed in a fresh process, as a mount server builds it.

``python -m bench.index_times`` reads ``{"layers": [...], "cache": path, "cold": bool}`` on stdin
and prints the timings (metric -> ``{"seconds", "ops"}``) as JSON: the index built by scanning the
layers and from their tables kept beside *cache*, and the cached index opened; the "cold" ones
after dropping the page cache.  Beside them, the floors: of a first scan, GNU ``find`` (C) reading
the same directories and ``lstat``-ing the same entries; of a cold build from kept tables, ``find``
``lstat``-ing the layers' roots alone (what checking each table's key costs); both counted in the
same index entries.  A fresh process, because the benchmark's own (large) heap made the same build
up to 2x slower than in the small process that really does it.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .measure import drop_caches

RUNS = 3  # each timing is the median of this many: a single run of a few milliseconds is at the
# mercy of whatever else the VM does in them


def times(layers: list[str], cache: Path, cold: bool) -> dict:
    from unionfs.index import TABLE_DIR, Index, build_index, cache_key

    tables = cache.parent / TABLE_DIR
    entries = build_index(layers).count

    def find(*depth: str) -> int:  # every stat field the index keeps, so find lstat-s every entry
        fields = "%i %s %m %U %G %n %T@ %C@\n"
        subprocess.run(["find", *layers, *depth, "-printf", fields], stdout=subprocess.DEVNULL, check=True)
        return entries

    def count(idx: Index | None) -> int | None:
        return idx.count if idx is not None else None

    out = {}
    for name, drop, run in (
        ("index_build", True, lambda: count(build_index(layers))),
        ("index_build_warm", False, lambda: count(build_index(layers))),
        ("index_build_tables", True, lambda: count(build_index(layers, table_dir=tables))),
        ("index_build_tables_warm", False, lambda: count(build_index(layers, table_dir=tables))),
        ("index_load", True, lambda: count(Index.load(cache, expect_key=cache_key(layers, deep=False)))),
        ("scan_floor", True, find),
        ("scan_floor_warm", False, find),
        ("tables_floor", True, lambda: find("-maxdepth", "0")),
    ):
        seconds = []
        for _ in range(RUNS):
            if drop and cold:
                drop_caches()
            t0 = time.perf_counter()
            ops = run()
            seconds.append(time.perf_counter() - t0)
        if ops is not None:
            out[name] = {"seconds": statistics.median(seconds), "ops": ops}
    return out


def main() -> None:
    job = json.load(sys.stdin)
    json.dump(times(job["layers"], Path(job["cache"]), job["cold"]), sys.stdout)


if __name__ == "__main__":
    main()
