"""The benchmark driver: stacks x repetitions x implementations (interleaved, order rotated).

Hygiene: a private mount namespace (``unshare(CLONE_NEWNS)`` + ``/`` made private) so no mount leaks
into the host's namespace; ``/dev/cpu_dma_latency`` held at 0 while measuring; every mount and FUSE
server started is removed on normal exit, errors, Ctrl-C, SIGTERM and SIGHUP.
"""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import impls as im
from .measure import Options, drop_caches, run_one
from .stack import Stack, StackParams, describe_merged, generate, to_kernel_form

DEFAULT_LAYERS = [1, 8, 64, 256, 1000]
DEEP = 100  # stacks with more layers than this get ``deep_reps`` repetitions
DEFAULT_IMPLS = [
    "strata",
    "strata-noindex",
    "kernel-overlay",
    "fuse-overlayfs",
    "strata-ctr",
    "kernel-overlay-ctr",
    "fuse-overlayfs-ctr",
]
CLONE_NEWNS = 0x00020000
MS_REC = 16384
MS_PRIVATE = 1 << 18


@dataclass
class Config:
    layers: list[int] = field(default_factory=lambda: list(DEFAULT_LAYERS))
    files: int = 2000
    files_sweep: list[int] | None = None  # files counts for the cost-vs-files sweep
    sweep_layers: int = 8  # layer count of the files sweep
    impls: list[str] = field(default_factory=lambda: list(DEFAULT_IMPLS))
    image: str | None = None
    reps: int = 3
    deep_reps: int = 1  # repetitions of stacks deeper than DEEP layers (they cost minutes each)
    seed: int = 0
    big_entries: int = 3000
    large_files: int = 2
    large_size: int = 32 << 20
    latency_hold: bool = True
    private_ns: bool = True
    cold: bool = True
    quick: bool = False
    workdir: Path | None = None
    keep: bool = False
    store_root: Path | None = None
    max_small: int = 3000

    @classmethod
    def quick_defaults(cls) -> Config:
        return cls(
            layers=[1, 8],
            files=1000,
            files_sweep=[1000, 4000],
            reps=1,
            deep_reps=1,
            big_entries=1000,
            large_files=2,
            large_size=4 << 20,
            quick=True,
            max_small=500,
        )

    def stacks(self) -> list[StackParams]:
        """The distinct stacks: the layers sweep at ``files``, then the files sweep at ``sweep_layers``."""
        sweep = (
            self.files_sweep
            if self.files_sweep is not None
            else sorted({max(1, self.files // 4), self.files, self.files * 4})
        )
        out: list[StackParams] = []
        for L in self.layers:
            out.append(self._p(L, self.files))
        for n in sweep:
            p = self._p(self.sweep_layers, n)
            if p not in out:
                out.append(p)
        return out

    def _p(self, layers: int, files: int) -> StackParams:
        return StackParams(layers, files, self.seed, self.big_entries, self.large_files, self.large_size)


class LatencyHold:
    """Hold /dev/cpu_dma_latency at 0 (no deep C-states) while open."""

    def __init__(self, enabled: bool) -> None:
        self.fd: int | None = None
        self.state = {"held": False, "reason": "disabled (--no-latency-hold)" if not enabled else None}
        if not enabled:
            return
        try:
            self.fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
            os.write(self.fd, b"\0\0\0\0")
            self.state = {"held": True, "reason": None}
        except OSError as e:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
            self.state = {"held": False, "reason": f"/dev/cpu_dma_latency: {e.strerror}"}

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def enter_private_namespace() -> dict:
    """unshare(CLONE_NEWNS) and make every mount private; returns {"private": bool, "reason"}."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        return {"private": False, "reason": f"unshare: {os.strerror(ctypes.get_errno())}"}
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return {"private": True, "reason": f"make-rprivate /: {os.strerror(ctypes.get_errno())}"}
    return {"private": True, "reason": None}


class _Interrupted(BaseException):
    pass


def _raise_interrupt(signum, _frame):
    raise _Interrupted(f"signal {signal.Signals(signum).name}")


def image_stack(ref: str, root: Path, store_root: Path | None) -> Stack:
    """A stack of the layers of image *ref* from the local store (kernel form converted alongside)."""
    from store.store import Store

    store = Store(store_root) if store_root else Store()
    rec = store.resolve(ref)
    layers = store.layer_dirs(rec)
    t0 = time.perf_counter()
    st = Stack(None, root, list(layers), label=f"image:{ref}")
    (root / "kernel").mkdir(parents=True)
    n = len(layers)
    st.kernel_layers = [to_kernel_form(p, root / "kernel" / str(n - 1 - i)) for i, p in enumerate(layers)]
    describe_merged(st)
    st.gen_seconds = time.perf_counter() - t0
    return st


def source_state() -> dict:
    """Which strata is measured: git commit, uncommitted files, a hash of the union filesystem sources."""
    import hashlib
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for p in sorted([*(repo / "unionfs").glob("*.py"), repo / "cli" / "overlay.py"]):
        try:
            h.update(p.name.encode() + b"\0" + p.read_bytes())
        except OSError:
            pass
    out = {"unionfs_sha256": h.hexdigest()[:16]}
    try:
        out["commit"] = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
        st = subprocess.run(
            ["git", "status", "--porcelain", "--", "unionfs", "cli/overlay.py"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        out["uncommitted"] = [line[3:] for line in st.splitlines()]
    except (OSError, subprocess.TimeoutExpired):
        out["commit"] = None
    return out


def byte_compile() -> bool:
    """Compile strata's sources as an install does: where PYTHONDONTWRITEBYTECODE is set, a source
    changed since set-up would be compiled again at every mount, and measured."""
    import compileall

    repo = Path(__file__).resolve().parents[1]
    return all(compileall.compile_dir(repo / d, quiet=1) for d in ("unionfs", "cli", "store"))


def run(cfg: Config, log=print) -> dict:
    """Run the benchmark; returns the raw results (see :mod:`bench.report` for the summary)."""
    if os.geteuid() != 0:
        raise SystemExit("strata bench must run as root (mounts, drop_caches)")
    byte_compile()
    impl_objs = im.make(cfg.impls)
    meta: dict = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "impls": [i.describe() for i in impl_objs],
        "source": source_state(),
    }
    ns = enter_private_namespace() if cfg.private_ns else {"private": False, "reason": "disabled (--no-private-ns)"}
    meta["mount_namespace"] = ns
    old = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    made_ws = cfg.workdir is None
    ws = Path(tempfile.mkdtemp(prefix="strata-bench-", dir="/var/tmp")) if made_ws else Path(cfg.workdir)
    ws.mkdir(parents=True, exist_ok=True)
    hold = LatencyHold(cfg.latency_hold)
    meta["latency_hold"] = hold.state
    meta["page_cache_drop"] = drop_caches() if cfg.cold else False
    meta["workdir"] = str(ws)
    stacks_info: list[dict] = []
    runs: list[dict] = []
    result = {"meta": meta, "stacks": stacks_info, "runs": runs}
    opts = Options(cold=cfg.cold and meta["page_cache_drop"], max_small=cfg.max_small)
    t_start = time.perf_counter()
    try:
        mp = ws / "mnt"
        mp.mkdir(exist_ok=True)
        for impl in impl_objs:
            impl.workspace(ws)
        todo: list = [("image", cfg.image)] if cfg.image else [("gen", p) for p in cfg.stacks()]
        for kind, what in todo:
            sroot = ws / ("image" if kind == "image" else what.id)
            if sroot.exists():
                shutil.rmtree(sroot)
            log(f"stack {what if kind == 'image' else what.id}: generating ...")
            stack = image_stack(what, sroot, cfg.store_root) if kind == "image" else generate(what, sroot)
            info = stack.describe()
            stacks_info.append(info)
            log(
                f"stack {stack.id}: {info['entries']} entries, {info['dirs']} dirs, "
                f"{stack.layers} layers, generated in {stack.gen_seconds:.1f}s"
            )
            reps = cfg.reps if stack.layers <= DEEP else max(1, min(cfg.reps, cfg.deep_reps))
            info["reps"] = reps
            for rep in range(reps):
                k = rep % len(impl_objs)
                order = impl_objs[k:] + impl_objs[:k]
                for pos, impl in enumerate(order):
                    cache = ws / "index" / f"{stack.id}-{impl.name}.idx"
                    cache.parent.mkdir(exist_ok=True)
                    t0 = time.perf_counter()
                    r = run_one(impl, stack, mp, cache, opts)
                    r.update(
                        {
                            "stack": stack.id,
                            "impl": impl.name,
                            "rep": rep,
                            "position": pos,
                            "wall_seconds": round(time.perf_counter() - t0, 3),
                        }
                    )
                    runs.append(r)
                    status = "ok" if r["ok"] else f"FAILED: {r['error']}"
                    log(f"  rep {rep + 1}/{reps} {impl.name:<18} {status} ({r['wall_seconds']:.1f}s)")
            if not cfg.keep:
                shutil.rmtree(sroot, ignore_errors=True)
        meta["interrupted"] = False
    except (KeyboardInterrupt, _Interrupted) as e:
        meta["interrupted"] = str(e) or "KeyboardInterrupt"
        log(f"interrupted ({meta['interrupted']}): cleaning up")
    finally:
        prev_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        for s in old:  # nothing interrupts the cleanup
            signal.signal(s, signal.SIG_IGN)
        try:
            meta["cleaned_up"] = im.cleanup_all()
            hold.close()
            if made_ws and not cfg.keep:
                shutil.rmtree(ws, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, prev_int)
            for s, h in old.items():
                signal.signal(s, h)
    meta["seconds"] = round(time.perf_counter() - t_start, 1)
    meta["loadavg_end"] = os.getloadavg()
    end = source_state()["unionfs_sha256"]
    meta["source"]["changed_during_run"] = end != meta["source"]["unionfs_sha256"]
    if meta["source"]["changed_during_run"]:
        log("WARNING: the union filesystem sources changed during the run; strata results mix two versions")
    meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return result


def main_exit_code(result: dict) -> int:
    if result["meta"].get("interrupted"):
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(0)
