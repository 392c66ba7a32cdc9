"""Shared helpers for the unionfs tests: layer builders, tree snapshots, mount bookkeeping."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

from unionfs.mount import mount_state, unmount


def build_layer(root: Path, entries: list[tuple], kernel_form: bool) -> None:
    """Materialise a layer from a list of entry tuples (see test_oracle) in OCI or kernel whiteout form.

    Entries that do not fit (parent is a non-directory, name taken, ...) are skipped identically in
    both forms, so the two renderings always describe the same layer.
    """
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    kinds: dict[str, str] = {"": "dir"}

    def parent_ok(path: str) -> bool:
        parts = path.split("/")
        for i in range(1, len(parts)):
            p = "/".join(parts[:i])
            k = kinds.get(p)
            if k is None:
                (root / p).mkdir(mode=0o755)
                os.chmod(root / p, 0o755)
                kinds[p] = "dir"
            elif k != "dir":
                return False
        return True

    for ent in entries:
        kind, path = ent[0], ent[1]
        if kind == "xattr":
            if kinds.get(path) in ("file", "dir"):
                os.setxattr(root / path, ent[2], ent[3])
            continue
        if path in kinds or not parent_ok(path):
            continue
        p = root / path
        if kind == "file":
            p.write_bytes(ent[2])
            os.chmod(p, ent[3])
        elif kind == "dir":
            p.mkdir()
            os.chmod(p, ent[2])
            if ent[3]:
                if kernel_form:
                    os.setxattr(p, "trusted.overlay.opaque", b"y")
                else:
                    (p / ".wh..wh..opq").touch(mode=0)
        elif kind == "symlink":
            os.symlink(ent[2], p)
        elif kind == "hardlink":
            if kinds.get(ent[2]) != "file":
                continue
            os.link(root / ent[2], p)
        elif kind == "fifo":
            os.mkfifo(p)
        elif kind == "whiteout":
            if kernel_form:
                os.mknod(p, stat.S_IFCHR, os.makedev(0, 0))
            else:
                (p.parent / (".wh." + p.name)).touch(mode=0)
        kinds[path] = "dir" if kind == "dir" else ("file" if kind in ("file", "hardlink") else kind)


def record(p: str | Path, st: os.stat_result | None = None) -> dict:
    """What snapshot() records about one entry."""
    st = st or os.lstat(p)
    rec: dict = {"fmt": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}
    if stat.S_ISREG(st.st_mode):
        rec["size"] = st.st_size
        rec["data"] = Path(p).read_bytes()
    if stat.S_ISLNK(st.st_mode):
        rec["target"] = os.readlink(p)
    if not stat.S_ISDIR(st.st_mode):
        rec["nlink"] = st.st_nlink
    if not stat.S_ISLNK(st.st_mode):
        # every xattr the merged view shows (security.capability and ACLs too); the overlays' own
        # (inode origins, opaque markers) never show through a mount, but do in the layers
        own = ("trusted.overlay.", "trusted.strata.", "user.strata.")
        names = [n for n in sorted(os.listxattr(p)) if not n.startswith(own)]
        rec["xattrs"] = {n: os.getxattr(p, n) for n in names}
    return rec


def identity(root: Path) -> dict[str, tuple[int, int, int]]:
    """(st_ino, st_mtime_ns, st_ctime_ns) of every entry below *root*, by relative path."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except FileNotFoundError:  # (overlayfs lists stray whiteouts of single-layer directories)
                continue
            out[os.path.relpath(p, root)] = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
    return out


def lineage(before: dict[str, tuple[int, int, int]], after: dict[str, tuple[int, int, int]]) -> dict[str, tuple]:
    """For each entry of *after*: the entries of *before* that were the same inode (none: a new one),
    and, if there were any, whether its mtime and its ctime are still theirs.  Comparable across
    implementations, whose inode numbers and clocks differ."""
    by_ino: dict[int, list[str]] = {}
    for p, (ino, *_times) in before.items():
        by_ino.setdefault(ino, []).append(p)
    out = {}
    for p, (ino, mtime, ctime) in after.items():
        was = sorted(by_ino.get(ino, []))
        old = before[was[0]] if was else None
        out[p] = (tuple(was), old is not None and old[1] == mtime, old is not None and old[2] == ctime)
    return out


def apply_changes(before: dict, changes) -> dict:
    """The tree *before* (a snapshot) with iter_changes() output applied, as docker would apply a diff
    (nlink and hard-link groups dropped: a change list does not carry them)."""
    tree = {k: v for k, v in before.items() if k != "#links"}

    def drop_below(rel: str) -> None:
        for k in [k for k in tree if k.startswith(rel + "/")]:
            del tree[k]

    for c in changes:
        rel = c.path.lstrip("/")
        if c.kind == "D":
            tree.pop(rel, None)
            drop_below(rel)
            continue
        rec = record(c.upper_path)
        if c.opaque or rec["fmt"] != stat.S_IFDIR:
            drop_below(rel)
        tree[rel] = rec
    for v in tree.values():
        v.pop("nlink", None)
    return tree


def snapshot(root: Path, kernel: bool = False) -> dict:
    """Everything observable about a tree (no timestamps, no directory sizes/nlink).

    *kernel*: skip names that readdir lists but lookup denies (overlayfs passes whiteouts of a
    single-layer directory through readdir).
    """
    out: dict = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                if kernel:
                    continue
                raise
            rec = record(p, st)
            if not stat.S_ISDIR(st.st_mode):
                inodes.setdefault(st.st_ino, []).append(rel)
            out[rel] = rec
    out["#links"] = sorted(sorted(v) for v in inodes.values() if len(v) > 1)
    return out


class Mounts:
    """Tracks mounts made by a test and unmounts them all at the end, whatever happened."""

    def __init__(self) -> None:
        self.points: list[Path] = []

    def add(self, mp: Path) -> Path:
        self.points.append(Path(mp))
        return Path(mp)

    def kernel_overlay(self, lowers: list[Path], upper: Path, work: Path, mp: Path) -> Path:
        opts = f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work},redirect_dir=on,index=on"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mp)], check=True, timeout=30)
        return self.add(mp)

    @staticmethod
    def kernel_unmount(mp: Path) -> None:
        """A plain umount (not a lazy one: the kernel keeps a detached overlay's upper "in use", and
        a mount that takes it as a lower then fails), retried while it is busy."""
        for _ in range(50):
            r = subprocess.run(["umount", str(mp)], capture_output=True, text=True, timeout=30)
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise AssertionError(f"umount {mp}: {r.stderr}")

    def close(self) -> None:
        for mp in reversed(self.points):
            try:
                if mount_state(mp) != "unmounted":
                    unmount(mp)
            except Exception:  # noqa: BLE001
                subprocess.run(["umount", "-l", str(mp)], capture_output=True, timeout=30)
        self.points.clear()


OVERLAY = [sys.executable, "-c", "import sys; from cli.overlay import main; sys.exit(main())"]


def traced_overlay(opts: str, mp: Path, trace: Path, calls: str) -> subprocess.Popen:
    """``strata-overlay -o OPTS MP`` under strace, which logs the system *calls* (``trace=`` form)
    of the mounting processes and of the server they fork, until the server exits at the unmount."""
    strace = ["strace", "-f", "-qq", "-e", f"trace={calls}", "-o", str(trace)]
    tracer = subprocess.Popen([*strace, *OVERLAY, "-o", opts, str(mp)], stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while mount_state(mp) != "mounted":
        assert tracer.poll() in (None, 0) and time.monotonic() < deadline, "the traced mount did not come up"
        time.sleep(0.05)
    return tracer
