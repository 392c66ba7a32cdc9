"""A tiny real run completes, writes the expected JSON and leaves nothing mounted or running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from bench.report import METRICS
from cli.main import cli

from .conftest import leftovers, needs_root_fuse

REPO = Path(__file__).resolve().parents[2]
READ_ONLY = ["strata", "strata-noindex", "kernel-overlay", "fuse-overlayfs"]
IMPLS = READ_ONLY + [f"{i}-ctr" for i in ("strata", "kernel-overlay", "fuse-overlayfs")]


def _bench(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bench", *args],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def test_strata_bench_is_a_command() -> None:
    r = CliRunner().invoke(cli, ["bench", "--help"])
    assert r.exit_code == 0
    for opt in ("--quick", "--layers", "--files", "--impl", "--image", "--plot", "--no-latency-hold", "--seed"):
        assert opt in r.output
    r = CliRunner().invoke(cli, ["bench", "--layers", "x"])
    assert r.exit_code == 2


def test_bench_stands_without_the_strata_command_line() -> None:
    code = (
        "import sys, runpy; sys.argv = ['bench', '--help']\n"
        "try: runpy.run_module('bench', run_name='__main__')\n"
        "except SystemExit: pass\n"
        "print(sorted(m for m in sys.modules if m == 'cli' or m.startswith(('cli.', 'click'))))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "--impl" in r.stdout and r.stdout.rstrip().endswith("[]"), r.stdout
    bad = [sys.executable, "-m", "bench", "--files", "x"]
    r = subprocess.run(bad, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--files" in r.stderr.splitlines()[-1]


def test_plot_without_matplotlib_says_how_to_install_it_before_running(tmp_path: Path) -> None:
    hide = "import sys; sys.modules['matplotlib'] = None\n"  # as if the optional extra were not installed
    for code in (
        hide + "from cli.main import main; sys.argv = ['strata', 'bench', '--quick', '--plot', sys.argv[1]]; main()",
        hide + "from bench.main import main; sys.exit(main(['--quick', '--plot', sys.argv[1]]))",
    ):
        r = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "p.png")], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 2, r
        assert "pip install 'strata[plot]'" in r.stderr.splitlines()[-1] and "Traceback" not in r.stderr
        assert r.stdout == "" and not (tmp_path / "p.png").exists()  # refused before any stack was made


@needs_root_fuse
def test_tiny_run_writes_json_and_leaves_nothing(tmp_path: Path) -> None:
    ws, out, png = tmp_path / "ws", tmp_path / "r.json", tmp_path / "r.png"
    p = _bench(
        "--quick",
        "--layers",
        "1,4",
        "--files",
        "50",
        "--files-sweep",
        "50",
        "--reps",
        "1",
        "--workdir",
        str(ws),
        "-o",
        str(out),
        "--plot",
        str(png),
    )
    try:
        log, _ = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, log
    r = json.loads(out.read_text())
    assert set(r) >= {"meta", "stacks", "runs", "summary"}
    assert {"latency_hold", "mount_namespace", "impls", "config", "kernel"} <= set(r["meta"])
    assert r["meta"]["latency_hold"]["held"] in (True, False)
    assert [s["id"] for s in r["stacks"]] == ["L1-F50", "L4-F50"]
    assert sorted((x["stack"], x["impl"]) for x in r["runs"]) == sorted(
        (s, i) for s in ("L1-F50", "L4-F50") for i in IMPLS
    )
    for x in r["runs"]:
        assert x["ok"], x
        assert x["checks"]["walk_complete"], x
        want = {
            "mount_cold",
            "mount_warm",
            "walk_cold",
            "walk_warm",
            "lookup_dirs_first",
            "lstat_files_first",
            "lstat_missing_first",
            "lookup_dirs_again",
            "bigdir_list_first",
            "read_large_cold",
            "read_small_warm",
            "statfs",
        }
        assert want <= set(x["metrics"]), x["impl"]
        assert set(x["metrics"]) <= set(METRICS) | {"rss_after_mount"}
        if x["impl"] == "strata":
            assert "mount_index_build" in x["metrics"] and "peak_rss" in x["metrics"]
            timed = {
                "mount_index_build_tables",
                "index_build",
                "index_build_tables",
                "index_load",
                "scan_floor",
                "tables_floor",
            }
            assert timed <= set(x["metrics"])  # (the index timings run in a child process)
        if x["impl"].startswith("strata"):  # the floor of a Python server's mount, beside its mount
            assert {"python_start", "python_start_cold"} <= set(x["metrics"])
        if x["impl"] == "strata-ctr":
            assert "mount_first_container" in x["metrics"] and "mount_index_build" not in x["metrics"]
    summary = r["summary"]["L4-F50"]
    assert summary["kernel-overlay"]["ratio"]["walk_cold"] == 1.0
    for impl in ("strata-ctr", "fuse-overlayfs-ctr"):  # the container path is compared with the kernel's own
        m, k = summary[impl]["metrics"], summary["kernel-overlay-ctr"]["metrics"]
        assert summary[impl]["ratio"]["mount_warm"] == m["mount_warm"] / k["mount_warm"]
    assert png.stat().st_size > 1000
    assert "cost relative to kernel-overlay" in log and "-- container: a new writable mount" in log
    assert leftovers(tmp_path) == ([], [])


@needs_root_fuse
def test_ctrl_c_removes_every_mount_and_server(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    p = _bench(
        "--layers",
        "4",
        "--files",
        "400",
        "--files-sweep",
        "400",
        "--reps",
        "50",
        "--no-private-ns",
        "--impl",
        "strata,fuse-overlayfs",
        "--workdir",
        str(ws),
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None:
            if leftovers(ws, exclude=(p.pid,))[1]:  # a FUSE server of the bench is up
                break
            time.sleep(0.05)
        assert p.poll() is None, p.stdout.read()
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        log, _ = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, log
    assert "interrupted" in log
    deadline = time.monotonic() + 10
    while leftovers(ws) != ([], []) and time.monotonic() < deadline:  # (servers exit asynchronously)
        time.sleep(0.1)
    assert leftovers(ws) == ([], [])
    assert os.path.isdir(ws)
