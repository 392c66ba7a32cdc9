"""The bench's entry: options to a config, the run, its outputs (``python -m bench`` and ``strata bench``)."""

from __future__ import annotations

from pathlib import Path

from . import report
from .run import Config, main_exit_code, run


def parse_ints(s: str | None, what: str) -> list[int] | None:
    if s is None:
        return None
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{what}: expected comma-separated integers, got '{s}'") from None
    if not out or any(x < 1 for x in out):
        raise ValueError(f"{what}: expected positive integers, got '{s}'")
    return out


def build_config(
    quick: bool = False,
    layers: str | None = None,
    files: int | None = None,
    files_sweep: str | None = None,
    sweep_layers: int | None = None,
    impls: str | None = None,
    image: str | None = None,
    reps: int | None = None,
    deep_reps: int | None = None,
    seed: int = 0,
    latency_hold: bool = True,
    private_ns: bool = True,
    workdir: Path | None = None,
    keep: bool = False,
    store_root: Path | None = None,
) -> Config:
    cfg = Config.quick_defaults() if quick else Config()
    if layers is not None:
        cfg.layers = parse_ints(layers, "--layers")
    if files is not None:
        if files < 1:
            raise ValueError("--files must be positive")
        cfg.files = files
        if files_sweep is None:
            cfg.files_sweep = [files, files * 4] if quick else None
    if files_sweep is not None:
        cfg.files_sweep = parse_ints(files_sweep, "--files-sweep")
    if sweep_layers is not None:
        cfg.sweep_layers = sweep_layers
    elif layers is not None and cfg.sweep_layers not in cfg.layers:
        cfg.sweep_layers = max(cfg.layers)
    if impls is not None:
        cfg.impls = [x.strip() for x in impls.split(",") if x.strip()]
    if reps is not None:
        cfg.reps = max(1, reps)
    if deep_reps is not None:
        cfg.deep_reps = max(1, deep_reps)
    cfg.image = image
    cfg.seed = seed
    cfg.latency_hold = latency_hold
    cfg.private_ns = private_ns
    cfg.workdir = workdir
    cfg.keep = keep
    cfg.store_root = store_root
    return cfg


PLOT_HINT = "--plot needs matplotlib, an optional extra: pip install 'strata[plot]' (or: pip install matplotlib)"


def config_from(values: dict) -> Config:
    """A config from parsed options (the ``dest`` names of :data:`bench.options.OPTIONS`);
    ValueError (one line) for a bad value, or for ``--plot`` without matplotlib."""
    if values.get("plot_path") is not None and not report.can_plot():
        raise ValueError(PLOT_HINT)
    keys = ("quick", "layers", "files", "files_sweep", "sweep_layers", "impls", "image", "reps", "deep_reps")
    return build_config(
        **{k: values.get(k) for k in keys if values.get(k) is not None},
        seed=values.get("seed") or 0,
        latency_hold=not values.get("no_latency_hold"),
        private_ns=not values.get("no_private_ns"),
        workdir=values.get("workdir"),
        keep=bool(values.get("keep")),
        store_root=values.get("store_root"),
    )


def execute(cfg: Config, output: Path | None, plot_path: Path | None, echo=print) -> int:
    result = run(cfg, log=lambda m: echo(m))
    summary = report.summarize(result)
    echo("")
    echo(report.table(result, summary))
    if output is not None:
        report.write_json(result, output, summary)
        echo(f"raw results: {output}")
    if plot_path is not None:
        made = report.plot(result, plot_path, summary)
        echo(f"plots: {', '.join(made) if made else '(nothing to plot)'}")
    return main_exit_code(result)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench``: the bench without the strata command line."""
    from .options import parser

    p = parser()
    values = vars(p.parse_args(argv))
    try:
        cfg = config_from(values)
    except ValueError as e:
        p.error(str(e))
    return execute(cfg, values["output"], values["plot_path"])
