"""Layer tables shared across containers: every new container of an image mounts with a new work
dir, as containers/storage does, and only the first one scans the image's layers."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from unionfs import sharedtables, tablepack

from .conftest import needs_fuse
from .helpers import OVERLAY, traced_overlay

FILES = 300


def _storage(home: Path) -> list[Path]:
    """A containers/storage overlay home with two committed layers; their ``l/`` links, topmost first."""
    links = []
    for n, layer in enumerate(("base", "app")):
        diff = home / layer / "diff"
        (diff / "d").mkdir(parents=True)
        for i in range(FILES):
            (diff / "d" / f"{layer}{i}").write_text(f"{layer} {i}\n")
        (home / "l").mkdir(exist_ok=True)
        link = home / "l" / f"LINK{n}"
        link.symlink_to(f"../{layer}/diff")
        links.insert(0, link)
    return links


def _container(tmp: Path, name: str) -> tuple[Path, Path, Path]:
    ctr = tmp / "overlay" / name
    for sub in ("diff", "work", "merged"):
        (ctr / sub).mkdir(parents=True)
    return ctr / "diff", ctr / "work", ctr / "merged"


def _mount(lowers: list[Path], up: Path, work: Path, mp: Path) -> None:
    opts = f"lowerdir={':'.join(map(str, lowers))},upperdir={up},workdir={work},,volatile"
    cmd = [*OVERLAY, "-o", opts, str(mp)]
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def _stats_of(trace: Path, prefix: str) -> int:
    """How many lstat calls of *trace* named a file called PREFIX<n> (relative to a directory, as
    the scan makes them, or by its path)."""
    return len(re.findall(rf'["/]{prefix}\d+"', trace.read_text()))


@needs_fuse
@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_second_container_of_an_image_reads_no_layer(tmp_path: Path, mounts, shared_tables: Path) -> None:
    links = _storage(tmp_path / "overlay")
    names = {f"base{i}" for i in range(FILES)} | {f"app{i}" for i in range(FILES)}
    traces = []
    for name in ("ctr1", "ctr2"):
        up, work, mp = _container(tmp_path, name)
        mounts.add(mp)
        traces.append(tmp_path / f"{name}.strace")
        opts = f"lowerdir={':'.join(map(str, links))},upperdir={up},workdir={work},,volatile"
        tracer = traced_overlay(opts, mp, traces[-1], "newfstatat,lstat,statx")
        try:
            assert set(os.listdir(mp / "d")) == names
            assert (mp / "d" / "app7").read_text() == "app 7\n"
        finally:
            subprocess.run(["fusermount3", "-u", str(mp)], check=True, timeout=30)
            tracer.wait(timeout=30)
    assert _stats_of(traces[0], "base") >= FILES  # the first container scans the layers
    assert _stats_of(traces[1], "base") == _stats_of(traces[1], "app") == 0  # the second: their kept tables
    kept = tablepack.roots(str(shared_tables))
    assert {os.fsencode(tmp_path / "overlay" / n / "diff") for n in ("base", "app")} <= set(kept)


@needs_fuse
def test_plain_lower_directories_are_never_shared(tmp_path: Path, mounts, shared_tables: Path) -> None:
    """A lower that is not a committed layer may change in place between mounts, which no key of a
    table notices: each new work dir sees it as it is now."""
    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "f").write_text("one\n")
    for n, want in enumerate(("one\n", "changed in place\n")):
        up, work, mp = _container(tmp_path, f"c{n}")
        mounts.add(mp)
        _mount([lower], up, work, mp)
        assert (mp / "f").read_text() == want
        subprocess.run(["fusermount3", "-u", str(mp)], check=True, timeout=30)
        (lower / "f").write_text("changed in place\n")  # (the directory's mtime stays)
    assert os.fsencode(lower) not in tablepack.roots(str(shared_tables))


@needs_fuse
def test_a_layer_mounted_as_an_upper_loses_its_kept_table(tmp_path: Path, mounts, shared_tables: Path) -> None:
    links = _storage(tmp_path / "overlay")
    up, work, mp = _container(tmp_path, "ctr")
    mounts.add(mp)
    _mount(links, up, work, mp)
    subprocess.run(["fusermount3", "-u", str(mp)], check=True, timeout=30)
    app = os.fsencode(tmp_path / "overlay" / "app" / "diff")
    assert app in tablepack.roots(str(shared_tables))
    _mount(links[1:], tmp_path / "overlay" / "app" / "diff", tmp_path / "overlay" / "app-work", mp)
    (mp / "d" / "app0").write_text("rewritten\n")
    subprocess.run(["fusermount3", "-u", str(mp)], check=True, timeout=30)
    assert app not in tablepack.roots(str(shared_tables))
    up2, work2, mp2 = _container(tmp_path, "ctr2")
    mounts.add(mp2)
    _mount(links, up2, work2, mp2)
    assert (mp2 / "d" / "app0").read_text() == "rewritten\n"


def test_tables_of_removed_layers_are_dropped_by_the_next_save(tmp_path: Path) -> None:
    from unionfs.index import layer_keys
    from unionfs.realpath import realpaths
    from unionfs.scanning import layer_tables

    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "x").mkdir(parents=True)
    where = tmp_path / "tables"
    stats: list = []
    roots = realpaths([a], stats)
    layer_tables(roots, where, layer_keys(roots, stats, False))
    shutil.rmtree(a)
    stats = []
    roots = realpaths([b], stats)
    layer_tables(roots, where, layer_keys(roots, stats, False))
    assert tablepack.roots(str(where)) == [os.fsencode(b)]


def test_which_lowers_are_committed_layers(tmp_path: Path) -> None:
    links = _storage(tmp_path / "overlay")
    real = [os.fsencode(os.path.realpath(p)) for p in links]
    assert sharedtables.immutable(links, real) == [True, True]
    # the same layers named directly (as a read-only mount names its first), or a link elsewhere
    direct = [tmp_path / "overlay" / "app" / "diff"]
    assert sharedtables.immutable(direct, real[:1]) == [False]
    (tmp_path / "x" / "l").mkdir(parents=True)
    (tmp_path / "x" / "l" / "L").symlink_to(tmp_path / "overlay" / "app" / "diff")
    assert sharedtables.immutable([tmp_path / "x" / "l" / "L"], real[:1]) == [False]


def test_where_a_user_keeps_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(sharedtables.ENV)
    if os.geteuid() == 0:
        assert sharedtables.shared_dir() == Path("/var/cache/strata-overlay")
    monkeypatch.setenv(sharedtables.ENV, "")
    assert sharedtables.shared_dir() is None
    monkeypatch.setenv(sharedtables.ENV, str(tmp_path))
    assert sharedtables.shared_dir() == tmp_path
