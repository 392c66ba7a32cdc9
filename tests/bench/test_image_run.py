"""`strata bench --image` measures the layers of an image from the store, as a user would run it."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from tests.helpers import REPO, strata

from .conftest import leftovers, needs_root_fuse


def _tree_entries(tree: Path) -> int:
    """Entries below / in a shared `expected/<name>.tree` file (the image builder's own record)."""
    return sum(1 for line in tree.read_text().splitlines() if re.match(r"[dflpcbs] \S+ \d+:\d+ ", line)) - 1


@needs_root_fuse
def test_bench_image_mounts_the_image_layers_with_each_impl(tmp_path: Path, root: Path, image_layouts: Path) -> None:
    strata(root, "load", "-i", str(image_layouts / "oci/layered"))
    strata(root, "tag", strata(root, "images", "-q").stdout.decode().split()[0], "layered:latest")
    ws, out = tmp_path / "ws", tmp_path / "r.json"
    cmd = [str(REPO / ".venv/bin/strata"), "--root", str(root), "bench", "--image", "layered", "--quick"]
    cmd += ["--reps", "1", "--impl", "strata,kernel-overlay", "--workdir", str(ws), "-o", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    r = json.loads(out.read_text())
    assert [s["id"] for s in r["stacks"]] == ["image:layered"]
    runs = {x["impl"]: x for x in r["runs"]}
    assert set(runs) == {"strata", "kernel-overlay"}
    for x in runs.values():
        assert x["ok"], x
    want = _tree_entries(image_layouts / "expected/layered.tree")
    assert r["stacks"][0]["entries"] == want
    assert r["stacks"][0]["layers"] == len(json.loads(strata(root, "inspect", "layered").stdout)[0]["RootFS"]["Layers"])
    for x in runs.values():
        assert x["checks"]["walk_entries"] == want
    assert leftovers(ws) == ([], [])


def test_bench_of_an_unknown_image_is_one_line(tmp_path: Path, root: Path) -> None:
    p = strata(root, "bench", "--image", "nope:1", "--workdir", str(tmp_path / "ws"), check=False)
    assert p.returncode == 1
    assert p.stderr.decode().strip().splitlines() == ["Error: No such image: nope:1"]
    assert not (tmp_path / "ws").exists()
