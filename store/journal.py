"""Intents of the store's multi-step changes, so that the next command finishes what a killed one began.

A command that changes several files (rmi untags, drops a record, then sweeps layers and blobs; a
pull or load adds blobs and layers before the record that refers to them) first writes an intent
in `tmp/` under its pid, and removes it when it is done.  An intent whose writer is dead marks an
interrupted change: the next command that takes the store lock completes it (`Store.recover`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .blobs import _owner_alive, fsync_dir, tmp_prefix

PREFIX = "intent"


def begin(tmp: Path, kind: str, data: object = None) -> Path:
    """Record, durably, that this process starts a change of *kind* (with *data* to finish it)."""
    fd, name = tempfile.mkstemp(dir=tmp, prefix=f"{tmp_prefix(PREFIX)}{kind}-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump({"kind": kind, "data": data}, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp)
    return Path(name)


def settle(intent: Path) -> None:
    """What the intent asked for is done but for the collection of what no record needs: it stays
    (under its dead writer's name) as a plain collection, so that it is never done twice."""
    tmp = intent.with_name("settle-" + intent.name)  # (a leftover of it is swept as any)
    tmp.write_text(json.dumps({"kind": "collect", "data": None}))
    os.replace(tmp, intent)


def end(intent: Path) -> None:
    intent.unlink(missing_ok=True)


def interrupted(tmp: Path) -> list[tuple[Path, str, object]]:
    """The intents of processes that died before they ended them: (file, kind, data)."""
    out = []
    for p in sorted(tmp.glob(f"{PREFIX}-*.json")):
        if _owner_alive(p.name):
            continue
        try:
            rec = json.loads(p.read_text())
            out.append((p, str(rec["kind"]), rec.get("data")))
        except (OSError, ValueError, KeyError, TypeError):  # torn before its fsync: nothing began
            out.append((p, "torn", None))
    return out
