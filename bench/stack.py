"""Deterministic synthetic layer stacks, their kernel-overlayfs twin, and the merged view they describe.

A stack is ``layers`` directories in OCI form (``.wh.NAME`` whiteout files, ``.wh..wh..opq`` opaque
markers) laid out as containers/storage keeps its overlay layers: ``<root>/overlay/I/diff`` for layer
``I`` = ``0`` (bottom) .. ``N-1`` (top), each named by a short link ``<root>/overlay/l/NAME`` ->
``../I/diff``, the names podman and buildah hand a ``mount_program``.  :func:`to_kernel_form` derives the
same layers in kernel overlayfs form (char device 0/0 whiteouts, ``trusted.overlay.opaque=y``) under
``<root>/kernel``; regular files are copies.

Everything generated is a pure function of ``(seed, layers, files, big_entries, large_files, large_size)``:
the same parameters give byte-identical trees (names, modes, contents; not timestamps).

Shape of a generated stack:

* ``d000 ..`` a directory tree (fan-out ~8, depth <= 5) of small files (0-64 KiB) spread over the
  layers; later layers override earlier files (~15% of their writes), whiteout files (~5%) and
  sometimes whole directories, and mark directories opaque; a few symlinks;
* ``big/``: one large merged directory whose entries are spread round-robin over all layers;
* ``blobs/``: a few large files (read throughput), spread over the layers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
import stat
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

WH = ".wh."
OPQ = ".wh..wh..opq"
KERNEL_OPAQUE = "trusted.overlay.opaque"
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque", "user.fuseoverlayfs.opaque")
BIG = "big"
BLOBS = "blobs"


@dataclass(frozen=True)
class StackParams:
    layers: int
    files: int
    seed: int = 0
    big_entries: int = 2000
    large_files: int = 2
    large_size: int = 8 << 20

    @property
    def id(self) -> str:
        return f"L{self.layers}-F{self.files}"


@dataclass
class Stack:
    """A generated (or imported) stack on disk plus what the measurements need to know about it."""

    params: StackParams | None
    root: Path
    oci_layers: list[Path]  # topmost first
    links: list[Path] = field(default_factory=list)  # containers/storage ``l/`` names of oci_layers, if laid out so
    kernel_layers: list[Path] = field(default_factory=list)  # topmost first, same order
    dirs: list[str] = field(default_factory=list)  # merged directories, BFS order, without "" (root)
    files: list[str] = field(default_factory=list)  # merged non-directories outside big/ and blobs/
    missing: list[str] = field(default_factory=list)  # names that do not exist (incl. whited-out ones)
    small: list[str] = field(default_factory=list)  # regular files outside big/ and blobs/
    big_dir: str = BIG
    big_entries: int = 0
    large: list[str] = field(default_factory=list)
    entries: int = 0  # merged entries below the root
    gen_seconds: float = 0.0
    label: str = ""

    @property
    def id(self) -> str:
        return self.label or (self.params.id if self.params else self.root.name)

    @property
    def layers(self) -> int:
        return len(self.oci_layers)

    def describe(self) -> dict:
        return {
            "id": self.id,
            "params": asdict(self.params) if self.params else None,
            "layers": self.layers,
            "entries": self.entries,
            "dirs": len(self.dirs),
            "files": len(self.files),
            "missing_probes": len(self.missing),
            "big_dir_entries": self.big_entries,
            "large_files": len(self.large),
            "gen_seconds": round(self.gen_seconds, 3),
        }


# -- generation -----------------------------------------------------------------------------------


def _content(path: str, layer: int, size: int) -> bytes:
    unit = f"{path}@{layer}\n".encode()
    return (unit * (size // len(unit) + 1))[:size]


def _small_size(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.70:
        return rng.randrange(0, 2048)
    if r < 0.98:
        return rng.randrange(2048, 16384)
    return rng.randrange(16384, 65536)


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _under(path: str, d: str) -> bool:
    return path.startswith(d + "/")


class _PathSet:
    """A set with deterministic O(1) random sampling (insertion/removal order is deterministic)."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.pos: dict[str, int] = {}

    def __contains__(self, p: str) -> bool:
        return p in self.pos

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(list(self.items))

    def add(self, p: str) -> None:
        if p not in self.pos:
            self.pos[p] = len(self.items)
            self.items.append(p)

    def discard(self, p: str) -> None:
        i = self.pos.pop(p, None)
        if i is None:
            return
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self.pos[last] = i

    def remove_under(self, d: str) -> None:
        for p in [p for p in self.items if _under(p, d)]:
            self.discard(p)

    def sample(self, rng: random.Random, k: int) -> list[str]:
        return [self.items[i] for i in rng.sample(range(len(self.items)), min(k, len(self.items)))]


class _LayerWriter:
    """Writes one layer (OCI form) and remembers what it created, to refuse conflicting entries."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made_dirs: set[str] = {""}
        self.blocked: set[str] = set()  # whited out in this layer
        root.mkdir(parents=True)
        os.chmod(root, 0o755)

    def ok_parent(self, path: str) -> bool:
        return not any(a in self.blocked for a in _ancestors(path)) and path not in self.blocked

    def mkdirs(self, d: str) -> None:
        if d in self.made_dirs:
            return
        for a in _ancestors(d) + [d]:
            if a not in self.made_dirs:
                os.mkdir(self.root / a, 0o755)
                os.chmod(self.root / a, 0o755)
                self.made_dirs.add(a)

    def write(self, path: str, data: bytes, mode: int) -> None:
        parent = path.rpartition("/")[0]
        self.mkdirs(parent)
        p = self.root / path
        with open(p, "wb") as f:
            f.write(data)
        os.chmod(p, mode)

    def symlink(self, path: str, target: str) -> None:
        self.mkdirs(path.rpartition("/")[0])
        os.symlink(target, self.root / path)

    def whiteout(self, path: str) -> None:
        parent, _, name = path.rpartition("/")
        self.mkdirs(parent)
        p = self.root / parent / (WH + name)
        p.touch(mode=0o644)
        os.chmod(p, 0o644)
        self.blocked.add(path)

    def opaque(self, d: str) -> None:
        self.mkdirs(d)
        (self.root / d / OPQ).touch(mode=0o644)


def generate(params: StackParams, root: Path, kernel: bool = True) -> Stack:
    """Generate the stack described by *params* under *root* (which must not exist)."""
    t0 = time.perf_counter()
    root = Path(root)
    (root / "overlay" / "l").mkdir(parents=True)
    rng = random.Random(f"strata-bench:{params.seed}:{params.layers}:{params.files}:{params.big_entries}")
    L = max(1, params.layers)

    # the directory set: a tree with fan-out ~8, depth <= 5
    n_dirs = max(4, params.files // 40)
    dirs: list[str] = []
    kids: dict[str, int] = {"": 0}
    for i in range(n_dirs):
        cands = [d for d in ([""] + dirs[-64:]) if kids.get(d, 0) < 8 and d.count("/") < 4]
        parent = rng.choice(cands) if cands and rng.random() < 0.85 else ""
        d = f"{parent}/d{i:03d}" if parent else f"d{i:03d}"
        kids[parent] = kids.get(parent, 0) + 1
        kids[d] = 0
        dirs.append(d)
    deep_dirs = [d for d in dirs if "/" in d]

    visible = _PathSet()  # visible non-directories outside big/ and blobs/
    per_layer = [params.files // L + (1 if i < params.files % L else 0) for i in range(L)]
    counter = 0
    for li in range(L):
        w = _LayerWriter(root / "overlay" / str(li) / "diff")
        if li > 0:
            # opaque directories (applied first), then directory and file whiteouts
            # every stack of >= 3 layers has at least one opaque dir and one directory whiteout
            force_opq, force_dwh = L >= 3 and li == L // 2, L >= 3 and li == (2 * L) // 3
            if deep_dirs and (rng.random() < 0.05 or force_opq):
                d = rng.choice(deep_dirs)
                w.opaque(d)
                visible.remove_under(d)
            if deep_dirs and (rng.random() < 0.03 or force_dwh):
                alive = sorted({a for p in visible.items for a in _ancestors(p)} & set(deep_dirs))
                d = rng.choice(alive) if force_dwh and alive else rng.choice(deep_dirs)
                if d not in w.made_dirs and w.ok_parent(d) and any(_under(p, d) for p in visible.items):
                    w.whiteout(d)
                    visible.remove_under(d)
            n_wh = int(per_layer[li] * 0.05 + rng.random())
            if n_wh and visible:
                for p in visible.sample(rng, n_wh):
                    if w.ok_parent(p) and p not in w.made_dirs:
                        w.whiteout(p)
                        visible.discard(p)
        n_over = int(per_layer[li] * 0.15) if li > 0 else 0
        overrides = visible.sample(rng, n_over) if n_over and visible else []
        for p in overrides:
            if not w.ok_parent(p) or os.path.lexists(w.root / p):
                continue
            if (w.root / p).parent.exists() and not (w.root / p).parent.is_dir():
                continue
            w.write(p, _content(p, li, _small_size(rng)), rng.choice((0o644, 0o644, 0o755)))
        # a layer touches a few directories (as real layers do): locality keeps mkdirs realistic
        local = rng.sample(dirs, min(len(dirs), max(2, per_layer[li] // 4)))
        for _ in range(per_layer[li] - len(overrides)):
            d = rng.choice(local)
            if not w.ok_parent(d + "/x"):
                d = ""
            counter += 1
            if rng.random() < 0.02:
                p = f"{d}/l{counter:06d}" if d else f"l{counter:06d}"
                w.symlink(p, f"../target-{rng.randrange(1000)}")
            else:
                p = f"{d}/f{counter:06d}.dat" if d else f"f{counter:06d}.dat"
                w.write(p, _content(p, li, _small_size(rng)), rng.choice((0o644, 0o644, 0o600, 0o755)))
            visible.add(p)
        # the big merged directory: entries round-robin over all layers
        for j in range(li, params.big_entries, L):
            w.write(f"{BIG}/e{j:05d}", _content(f"e{j}", li, j % 97), 0o644)
        # large files spread over the layers
        for k in range(params.large_files):
            if k * L // max(1, params.large_files) == li:
                w.write(f"{BLOBS}/large{k}.bin", _large_content(params.seed, k, params.large_size), 0o644)
    oci = [root / "overlay" / str(i) / "diff" for i in reversed(range(L))]
    st = Stack(params, root, oci, [_link(root, params.seed, i) for i in reversed(range(L))])
    if kernel:
        st.kernel_layers = [to_kernel_form(p, root / "kernel" / p.parent.name) for p in oci]
    describe_merged(st, rng)
    st.gen_seconds = time.perf_counter() - t0
    return st


def _link(root: Path, seed: int, i: int) -> Path:
    """Layer *i*'s short name, as containers/storage makes one (26 characters of base32)."""
    name = base64.b32encode(hashlib.sha256(f"{seed}:{i}".encode()).digest()).decode()[:26]
    link = root / "overlay" / "l" / name
    os.symlink(f"../{i}/diff", link)
    return link


def _large_content(seed: int, k: int, size: int) -> bytes:
    block = random.Random(f"large:{seed}:{k}").randbytes(1 << 16)
    return (block * (size // len(block) + 1))[:size]


# -- whiteout conversion --------------------------------------------------------------------------


def to_kernel_form(src: Path, dst: Path) -> Path:
    """Copy layer *src* (OCI whiteouts) to *dst* in kernel overlayfs form.

    ``.wh.NAME`` becomes a char device 0/0 named NAME, ``.wh..wh..opq`` becomes the
    ``trusted.overlay.opaque=y`` xattr on its directory.  Regular files are copied: hard links
    would give every file of both forms a link count of 2, which the filesystems under test treat as
    hard links (a writable strata mount, as kernel overlayfs's index, looks such a file up each
    time), and would share one page cache between the kernel's mount and the others'.
    """
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True)
    shutil.copystat(src, dst, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        out = dst if rel == "." else dst / rel
        for d in dirnames:
            s = os.path.join(dirpath, d)
            o = out / d
            os.mkdir(o)
            _copy_xattrs(s, o)
        for name in filenames:
            s = os.path.join(dirpath, name)
            if name == OPQ:
                os.setxattr(out, KERNEL_OPAQUE, b"y", follow_symlinks=False)
                continue
            if name.startswith(WH):
                os.mknod(out / name[len(WH) :], stat.S_IFCHR | 0o000, os.makedev(0, 0))
                continue
            o = out / name
            st = os.lstat(s)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(s), o)
                os.lchown(o, st.st_uid, st.st_gid)
            elif stat.S_ISREG(st.st_mode):
                shutil.copy2(s, o)
                os.chown(o, st.st_uid, st.st_gid)
            elif stat.S_ISFIFO(st.st_mode):
                os.mkfifo(o, stat.S_IMODE(st.st_mode))
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                os.mknod(o, st.st_mode, st.st_rdev)
            else:
                continue
    # directory attributes last (mtimes were touched while filling them)
    for dirpath, dirnames, _ in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        for d in dirnames + ([] if rel != "." else []):
            s = os.path.join(dirpath, d)
            o = (dst if rel == "." else dst / rel) / d
            st = os.lstat(s)
            os.chown(o, st.st_uid, st.st_gid)
            os.chmod(o, stat.S_IMODE(st.st_mode))
    st = os.lstat(src)
    os.chown(dst, st.st_uid, st.st_gid)
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    return dst


def _copy_xattrs(src: str, dst: Path) -> None:
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    for n in names:
        try:
            os.setxattr(dst, n, os.getxattr(src, n, follow_symlinks=False), follow_symlinks=False)
        except OSError:
            pass


# -- the merged view (an independent oracle, also used for --image stacks) ------------------------


def _is_opaque(path: str, names: set[str]) -> bool:
    if OPQ in names:
        return True
    for x in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, x, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


def merged_view(layers: list[Path]) -> tuple[dict[str, os.stat_result], set[str]]:
    """The merged tree of *layers* (topmost first, either whiteout form).

    Returns ``(entries, hidden)``: merged path -> lstat of the visible file (root excluded), in BFS
    order with children sorted; and the paths that exist in some layer but are hidden (whiteouts,
    opaque directories).
    """
    out: dict[str, os.stat_result] = {}
    hidden: set[str] = set()
    queue: deque[tuple[str, list[str]]] = deque([("", [str(p) for p in layers])])
    while queue:
        rel, contrib = queue.popleft()
        merged: dict[str, list] = {}  # name -> [stat, [dirs...] or None]
        closed: set[str] = set()
        for realdir in contrib:
            try:
                names = set(os.listdir(realdir))
            except OSError:
                continue
            wh: set[str] = set()
            for name in sorted(names):
                p = os.path.join(realdir, name)
                if name.startswith(WH):
                    if name != OPQ:
                        wh.add(name[len(WH) :])
                    continue
                st = os.lstat(p)
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    wh.add(name)
                    continue
                if name in closed:
                    hidden.add(f"{rel}/{name}" if rel else name)
                    continue
                cur = merged.get(name)
                if cur is None:
                    merged[name] = [st, [p] if stat.S_ISDIR(st.st_mode) else None]
                    if not stat.S_ISDIR(st.st_mode):
                        closed.add(name)
                elif cur[1] is not None and stat.S_ISDIR(st.st_mode):
                    cur[1].append(p)
                else:
                    closed.add(name)
            for name in wh:
                if name not in merged:
                    hidden.add(f"{rel}/{name}" if rel else name)
            closed |= wh
            if _is_opaque(realdir, names):
                break
        for name in sorted(merged):
            st, sub = merged[name]
            path = f"{rel}/{name}" if rel else name
            out[path] = st
            if sub is not None:
                queue.append((path, sub))
    return out, hidden


def describe_merged(st: Stack, rng: random.Random | None = None) -> None:
    """Fill in the lists the measurements use (dirs, files, missing names, big dir, large files)."""
    rng = rng or random.Random(f"describe:{st.root}")
    view, hidden = merged_view(st.oci_layers)
    st.entries = len(view)
    st.dirs = [p for p, s in view.items() if stat.S_ISDIR(s.st_mode)]
    st.files = [
        p for p, s in view.items() if not stat.S_ISDIR(s.st_mode) and not p.startswith((BIG + "/", BLOBS + "/"))
    ]
    st.small = [p for p in st.files if stat.S_ISREG(view[p].st_mode)]
    st.big_entries = sum(1 for p in view if p.startswith(BIG + "/") and "/" not in p[len(BIG) + 1 :])
    if not st.big_entries and st.dirs:  # imported image: the largest directory
        counts: dict[str, int] = {}
        for p in view:
            parent = p.rpartition("/")[0]
            counts[parent] = counts.get(parent, 0) + 1
        st.big_dir, st.big_entries = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
    st.large = [p for p, s in view.items() if p.startswith(BLOBS + "/") and stat.S_ISREG(s.st_mode)]
    if not st.large:  # imported image: the 4 largest regular files
        regs = sorted(((s.st_size, p) for p, s in view.items() if stat.S_ISREG(s.st_mode)), reverse=True)
        st.large = [p for _s, p in regs[:4]]
    hid = sorted(h for h in hidden if h not in view)
    n = max(1, len(st.files) // 2)
    parents = [""] + st.dirs
    missing = [f"{rng.choice(parents)}/nx{i:06d}".lstrip("/") for i in range(n)]
    st.missing = missing + hid[: max(n, 1)]


def save_manifest(st: Stack) -> None:
    (st.root / "stack.json").write_text(json.dumps(st.describe(), indent=1))
