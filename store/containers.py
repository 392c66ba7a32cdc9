"""Container records: a writable layer (upper + work dirs) over one image."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from .blobs import fsync_dir, tmp_prefix
from .errors import Ambiguous, Conflict, InvalidInput, NotFound
from .images import atomic_write

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


@dataclass
class Container:
    id: str  # 64 hex characters
    name: str
    image: str  # image ID
    image_ref: str  # what the user named, for `ps`
    created: str
    mountpoint: str | None = None
    mount_pid: int | None = None
    throwaway: bool = False  # made by `mount --read-write IMAGE`: removed on umount
    status: str = "created"  # `run`: "running", then "exited"
    exit_code: int | None = None
    finished: str | None = None


class ContainerIndex:
    def __init__(self, root: Path, tmp: Path) -> None:
        self.dir = root / "containers"
        self.tmp = tmp
        self.dir.mkdir(parents=True, exist_ok=True)

    def home(self, cid: str) -> Path:
        return self.dir / cid

    def upper(self, cid: str) -> Path:
        return self.home(cid) / "upper"

    def work(self, cid: str) -> Path:
        return self.home(cid) / "work"

    def all(self) -> list[Container]:
        out = []
        for home in self.dir.iterdir():
            try:
                out.append(Container(**json.loads((home / "container.json").read_text())))
            except FileNotFoundError:
                continue
        return sorted(out, key=lambda c: c.created, reverse=True)

    def put(self, c: Container) -> None:
        atomic_write(self.home(c.id) / "container.json", json.dumps(asdict(c), indent=1).encode(), self.tmp)

    def create(self, c: Container) -> None:
        """Make the container's directories in a temporary place, then rename it into view."""
        if not _NAME.match(c.name):
            raise InvalidInput(f"invalid container name {c.name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        if any(o.name == c.name for o in self.all()):
            raise Conflict(f'the container name "{c.name}" is already in use')
        work = Path(tempfile.mkdtemp(dir=self.tmp, prefix=tmp_prefix("ctr")))
        (work / "upper").mkdir()
        (work / "work").mkdir()
        atomic_write(work / "container.json", json.dumps(asdict(c), indent=1).encode(), self.tmp)
        os.rename(work, self.home(c.id))
        fsync_dir(self.home(c.id).parent)

    def find(self, text: str) -> Container:
        """By name, full ID or unique ID prefix."""
        everything = self.all()
        for c in everything:
            if c.name == text or c.id == text:
                return c
        matches = [c for c in everything if len(text) >= 1 and c.id.startswith(text)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise Ambiguous(f"container ID prefix {text!r} is ambiguous: " + ", ".join(c.id[:12] for c in matches))
        raise NotFound(f"No such container: {text}")

    def delete(self, cid: str) -> None:
        home = self.home(cid)
        grave = Path(tempfile.mkdtemp(dir=self.tmp, prefix=tmp_prefix("rmctr")))
        os.rename(home, grave / "x")
        shutil.rmtree(grave, ignore_errors=True)
