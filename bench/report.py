"""Summaries of raw results: medians, ratios to kernel overlayfs, a text table, JSON and PNG plots."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

BASELINE = "kernel-overlay"
CONTAINER = "-ctr"  # the suffix of the container path's implementations (bench/impls.py)
PATHS = {
    "": "read-only mount of the layers (strata: index kept by the caller)",
    CONTAINER: "container: a new writable mount through the mount program, new upper and work dir",
}


def baseline(impl: str) -> str:
    """The kernel overlayfs column an implementation is compared with: the one on its own path."""
    return BASELINE + CONTAINER if impl.endswith(CONTAINER) else BASELINE


def path_of(impl: str) -> str:
    return CONTAINER if impl.endswith(CONTAINER) else ""


# name -> (kind, label).  kind: "time" (seconds, lower is better), "rate" (ops/s), "bytes" (MB/s),
# "mem" (MiB).  The ratio column is always a *cost* ratio: > 1 means slower / bigger than the kernel.
METRICS: dict[str, tuple[str, str]] = {
    "mount_index_build": ("time", "mount, no index cache nor layer tables, cold"),
    "mount_index_build_tables": ("time", "mount, no index cache, layer tables kept, cold"),
    "index_build": ("rate", "index build, layers scanned, cold (entries/s)"),
    "index_build_warm": ("rate", "index build, layers scanned, warm (entries/s)"),
    "index_build_tables": ("rate", "index build from layer tables, cold (entries/s)"),
    "index_build_tables_warm": ("rate", "index build from layer tables, warm (entries/s)"),
    "index_load": ("time", "index open from cache (mmap), cold"),
    "scan_floor": ("rate", "find -printf over the layers (C), cold (index entries/s)"),
    "scan_floor_warm": ("rate", "find -printf over the layers (C), warm (index entries/s)"),
    "tables_floor": ("rate", "find -maxdepth 0 over the layer roots (C), cold (index entries/s)"),
    "mount_first_container": ("time", "first container of an image (no tables), cold"),
    "mount_cold": ("time", "mount until / lists, cold"),
    "python_start_cold": ("time", "  floor: python start + import pyfuse3, cold"),
    "mount_warm": ("time", "mount until / lists, warm"),
    "python_start": ("time", "  floor: python start + import pyfuse3, warm"),
    "walk_cold": ("rate", "full walk, cold (entries/s)"),
    "walk_warm": ("rate", "full walk, warm (entries/s)"),
    "lookup_dirs_first": ("rate", "first lookup of every dir (ops/s)"),
    "lstat_files_first": ("rate", "lstat never-looked-up files (ops/s)"),
    "lstat_missing_first": ("rate", "lstat missing names (ops/s)"),
    "lookup_dirs_again": ("rate", "lookup dirs, repeated (ops/s)"),
    "lstat_files_again": ("rate", "lstat files, repeated (ops/s)"),
    "lstat_missing_again": ("rate", "lstat missing, repeated (ops/s)"),
    "statfs": ("rate", "statfs, one request round trip (ops/s)"),
    "bigdir_list_first": ("time", "list big merged dir, first"),
    "bigdir_list_again": ("time", "list big merged dir, repeated"),
    "read_large_cold": ("bytes", "read large files, cold (MB/s)"),
    "read_large_warm": ("bytes", "read large files, warm (MB/s)"),
    "read_small_cold": ("rate", "read small files, cold (files/s)"),
    "read_small_warm": ("rate", "read small files, warm (files/s)"),
    "peak_rss": ("mem", "server peak RSS VmHWM (MiB)"),
}


# a metric only strata has, compared with the kernel's: every kernel mount is a first one
RATIO_TO = {"mount_first_container": "mount_cold"}


def value(metric: str, m: dict) -> float | None:
    """The displayed value of one raw metric record."""
    kind = METRICS.get(metric, ("time", ""))[0]
    if "kib" in m:
        return m["kib"] / 1024
    s, n = m.get("seconds"), m.get("ops")
    if s is None:
        return None
    if kind == "time":
        return s
    if not s:
        return None
    return n / s / (1e6 if kind == "bytes" else 1)


def cost(metric: str, v: float) -> float:
    """A number where bigger is worse (to form cost ratios)."""
    kind = METRICS.get(metric, ("time", ""))[0]
    return v if kind in ("time", "mem") else (1.0 / v if v else float("inf"))


def summarize(result: dict) -> dict:
    """``{stack: {impl: {"ok", "error", "n", "metrics": {metric: median}, "ratio": {metric: cost ratio}}}}``."""
    out: dict = {}
    for r in result["runs"]:
        s = out.setdefault(r["stack"], {}).setdefault(r["impl"], {"ok": 0, "failed": 0, "error": None, "samples": {}})
        if r["ok"]:
            s["ok"] += 1
        else:
            s["failed"] += 1
            s["error"] = r["error"]
        for k, m in r["metrics"].items():
            v = value(k, m)
            if v is not None:
                s["samples"].setdefault(k, []).append(v)
    for impls in out.values():
        for s in impls.values():
            s["metrics"] = {k: statistics.median(v) for k, v in s.pop("samples").items()}
        for name, s in impls.items():
            base = impls.get(baseline(name), {}).get("metrics", {})
            s["ratio"] = {}
            for k, v in s["metrics"].items():
                b = base.get(RATIO_TO.get(k, k))
                if b is not None and v is not None:
                    cb = cost(k, b)
                    s["ratio"][k] = cost(k, v) / cb if cb else None
    return out


def _fmt(v: float | None, metric: str) -> str:
    if v is None:
        return "-"
    kind = METRICS.get(metric, ("time", ""))[0]
    if kind == "time":
        return f"{v * 1000:.1f} ms" if v < 10 else f"{v:.1f} s"
    if kind == "mem":
        return f"{v:.1f}"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e4:
        return f"{v / 1e3:.0f}k"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def _load(x) -> str:
    return f"{x[0]:.1f}" if x else "?"


def table(result: dict, summary: dict | None = None) -> str:
    """Text table: per stack, one row per metric, one column per implementation (median, ×kernel cost)."""
    summary = summary or summarize(result)
    impls = [i["name"] for i in result["meta"]["impls"]]
    lines: list[str] = []
    meta = result["meta"]
    lines.append(
        f"strata bench  kernel {meta.get('kernel')}  cpus {meta.get('cpus')}  reps {meta['config'].get('reps')}  "
        f"latency hold: {'yes' if meta.get('latency_hold', {}).get('held') else 'no'}  "
        f"private mount ns: {'yes' if meta.get('mount_namespace', {}).get('private') else 'no'}  "
        f"page cache drop: {'yes' if meta.get('page_cache_drop') else 'no'}  "
        f"load avg {_load(meta.get('loadavg_start'))} -> {_load(meta.get('loadavg_end'))}"
    )
    src = meta.get("source") or {}
    if src:
        dirty = f", uncommitted: {' '.join(src.get('uncommitted') or [])}" if src.get("uncommitted") else ""
        changed = "  SOURCES CHANGED DURING THE RUN" if src.get("changed_during_run") else ""
        lines.append(f"strata at {src.get('commit')} (unionfs {src.get('unionfs_sha256')}{dirty}){changed}")
    lines.append(
        "values are medians; (x1.23) = cost relative to kernel-overlay on the same path (>1 slower/bigger, <1 faster)"
    )
    info = {s["id"]: s for s in result.get("stacks", [])}
    w0 = max(len(lbl) for _k, lbl in METRICS.values()) + 2
    cw = 24
    for sid, per in summary.items():
        si = info.get(sid, {})
        lines.append("")
        lines.append(
            f"== {sid}: {si.get('layers', '?')} layers, {si.get('entries', '?')} entries, "
            f"{si.get('dirs', '?')} dirs, big dir {si.get('big_dir_entries', '?')} entries, "
            f"{si.get('reps', '?')} rep(s)"
        )
        for path, title in PATHS.items():
            cols = [i for i in impls if path_of(i) == path]
            if cols:
                lines.append(f"-- {title}")
                lines += _rows(per, cols, w0, cw)
    return "\n".join(lines) + "\n"


def _rows(per: dict, impls: list[str], w0: int, cw: int) -> list[str]:
    lines = ["".ljust(w0) + "".join(i.ljust(cw) for i in impls)]
    for i in impls:
        s = per.get(i)
        if s and s["failed"] and not s["ok"]:
            lines.append(f"  {i}: {s['error']}")
    for metric, (_kind, label) in METRICS.items():
        if not any(metric in per.get(i, {}).get("metrics", {}) for i in impls):
            continue
        row = label.ljust(w0)
        for i in impls:
            s = per.get(i)
            if not s or metric not in s["metrics"]:
                cell = "cannot mount" if s and not s["ok"] else "-"
            else:
                cell = _fmt(s["metrics"][metric], metric)
                ratio = s["ratio"].get(metric)
                if ratio is not None and i != baseline(i):
                    cell += f" (x{ratio:.2f})"
            row += cell.ljust(cw)
        lines.append(row.rstrip())
    return lines


def write_json(result: dict, path: Path, summary: dict | None = None) -> None:
    out = dict(result)
    out["summary"] = summary or summarize(result)
    Path(path).write_text(json.dumps(out, indent=1, sort_keys=False, default=str) + "\n")


PLOT_METRICS = [
    "mount_cold",
    "walk_cold",
    "walk_warm",
    "lookup_dirs_first",
    "lstat_missing_first",
    "bigdir_list_first",
    "read_small_cold",
    "read_large_cold",
    "peak_rss",
]


def _per_op_cost(metric: str, v: float) -> tuple[float, str]:
    """Plot cost: seconds for times, microseconds per op for rates, s/GB... (bigger = worse)."""
    kind = METRICS[metric][0]
    if kind == "time":
        return v * 1000, "ms"
    if kind == "mem":
        return v, "MiB"
    if kind == "bytes":
        return 1e3 / v if v else float("nan"), "ms per GB"  # v is MB/s
    return 1e6 / v if v else float("nan"), "µs per op"


def can_plot() -> bool:
    """Whether matplotlib (the optional extra ``strata[plot]``) is installed."""
    import importlib.util

    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):  # (ValueError: a module set to None in sys.modules)
        return False


def plot(result: dict, path: Path, summary: dict | None = None) -> list[str]:
    """PNG: cost vs layers (top rows) and cost vs files (bottom rows), one line per implementation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    summary = summary or summarize(result)
    stacks = {s["id"]: s for s in result.get("stacks", []) if s.get("params")}
    cfg = result["meta"]["config"]
    impls = [i["name"] for i in result["meta"]["impls"]]
    files0, sweep_layers = cfg.get("files"), cfg.get("sweep_layers")
    by_layers = sorted((s["params"]["layers"], sid) for sid, s in stacks.items() if s["params"]["files"] == files0)
    by_files = sorted((s["params"]["files"], sid) for sid, s in stacks.items() if s["params"]["layers"] == sweep_layers)
    series = [("layers", by_layers, f"files={files0}"), ("files", by_files, f"layers={sweep_layers}")]
    series = [x for x in series if len(x[1]) >= 1]
    if not series:
        return []
    colors = {impl: f"C{i}" for i, impl in enumerate(impls)}
    ncol = 3
    nrow_per = (len(PLOT_METRICS) + ncol - 1) // ncol
    fig, axes = plt.subplots(
        nrow_per * len(series), ncol, figsize=(4.2 * ncol, 2.9 * nrow_per * len(series)), squeeze=False
    )
    for si, (xname, pts, fixed) in enumerate(series):
        for k, metric in enumerate(PLOT_METRICS):
            ax = axes[si * nrow_per + k // ncol][k % ncol]
            unit = ""
            for impl in impls:
                xs, ys = [], []
                for x, sid in pts:
                    v = summary.get(sid, {}).get(impl, {}).get("metrics", {}).get(metric)
                    if v is None:
                        continue
                    c, unit = _per_op_cost(metric, v)
                    xs.append(x)
                    ys.append(c)
                if xs:
                    ax.plot(xs, ys, marker="o", label=impl, color=colors[impl])
            ax.set_xscale("log")
            ax.set_yscale("log")
            xt = [x for x, _ in pts]
            ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(xt))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([str(x) for x in xt]))
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.set_title(f"{METRICS[metric][1].split(' (')[0]}  [{fixed}]", fontsize=8)
            ax.set_xlabel(xname, fontsize=8)
            ax.set_ylabel(f"cost, {unit}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for r in axes:
        for a in r:
            h, lab = a.get_legend_handles_labels()
            if len(h) > len(handles):
                handles, labels = h, lab
    fig.legend(handles, labels, loc="upper center", ncol=len(impls), fontsize=9, bbox_to_anchor=(0.5, 0.985))
    fig.suptitle("strata bench: cost (lower is better); top: vs layers, bottom: vs files", y=0.995, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return [str(path)]
