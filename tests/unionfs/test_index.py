"""The precompiled index: merge rules, inode numbering, persistence, cache validity."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from bench.stack import StackParams, generate, merged_view
from unionfs import index, layertable, tablepack
from unionfs.index import Index, build_index, cache_key, load_or_build
from unionfs.probe import ProbeLower


def paths(idx) -> dict[str, int]:
    """Every visible path of an index (walked through children()) -> mode."""
    out: dict[str, int] = {}
    todo = [0]
    while todo:
        e = todo.pop()
        out[idx.path(e).decode()] = idx.mode(e)
        if idx.is_dir(e):
            todo.extend(idx.children(e))
    return out


def mk(root: Path, spec: dict[str, str | None]) -> Path:
    """Create files ('text'), dirs (None: path ends with '/') under *root*."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in spec.items():
        p = root / rel
        if rel.endswith("/"):
            p.mkdir(parents=True, exist_ok=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(content or "")
    return root


@pytest.fixture
def stack(tmp_path: Path) -> list[Path]:
    low = mk(
        tmp_path / "low",
        {
            "etc/motd": "m",
            "etc/passwd": "p",
            "gone/x": "x",
            "opq/old": "o",
            "file_then_dir": "f",
            "dir_then_file/y": "y",
            "keep/a": "a",
        },
    )
    top = mk(
        tmp_path / "top",
        {
            "etc/new": "n",
            ".wh.gone": "",
            "opq/.wh..wh..opq": "",
            "opq/newf": "n",
            "file_then_dir/z": "z",
            "dir_then_file": "F",
            "etc/.wh.passwd": "",
            "keep/b": "b",
        },
    )
    return [top, low]


def test_oci_whiteouts_and_opaque(stack: list[Path]) -> None:
    got = paths(build_index(stack))
    assert sorted(got) == [
        "/",
        "/dir_then_file",
        "/etc",
        "/etc/motd",
        "/etc/new",
        "/file_then_dir",
        "/file_then_dir/z",
        "/keep",
        "/keep/a",
        "/keep/b",
        "/opq",
        "/opq/newf",
    ]
    assert stat.S_ISDIR(got["/file_then_dir"]) and stat.S_ISREG(got["/dir_then_file"])


def test_kernel_whiteouts_and_opaque_xattrs(tmp_path: Path) -> None:
    low = mk(tmp_path / "low", {"a/x": "", "b/x": "", "c/x": "", "w": "", "d/": None})
    top = mk(tmp_path / "top", {"a/y": "", "b/y": "", "c/y": "", "d/": None})
    os.mknod(top / "w", stat.S_IFCHR, os.makedev(0, 0))
    os.setxattr(top / "a", "trusted.overlay.opaque", b"y")
    os.setxattr(top / "b", "user.overlay.opaque", b"y")
    os.setxattr(top / "c", "user.fuseoverlayfs.opaque", b"y")
    os.setxattr(top / "d", "user.overlay.opaque", b"n")  # not "y": not opaque
    mk(low, {"d/kept": ""})
    got = sorted(paths(build_index([top, low])))
    assert got == ["/", "/a", "/a/y", "/b", "/b/y", "/c", "/c/y", "/d", "/d/kept"]


def test_whiteout_in_middle_layer_stops_merge(tmp_path: Path) -> None:
    bottom = mk(tmp_path / "l3", {"d/old": ""})
    middle = mk(tmp_path / "l2", {".wh.d": ""})
    top = mk(tmp_path / "l1", {"d/new": ""})
    assert sorted(paths(build_index([top, middle, bottom]))) == ["/", "/d", "/d/new"]


def test_bfs_inode_numbers_and_lookup(tmp_path: Path) -> None:
    low = mk(tmp_path / "l", {"b/x": "", "a/z": "", "a/y": "", "c": ""})
    idx = build_index([low])
    order = [idx.path(i).decode() for i in range(idx.count)]
    assert order == ["/", "/a", "/b", "/c", "/a/y", "/a/z", "/b/x"]
    assert [idx.ino(i) for i in range(idx.count)] == list(range(1, 8))
    a = idx.lookup(0, b"a")
    assert idx.path(idx.lookup(a, b"z")) == b"/a/z"
    assert idx.lookup(a, b"x") == -1 and idx.lookup(0, b"nope") == -1
    assert build_index([low]).ino(idx.lookup(a, b"z")) == idx.ino(idx.lookup(a, b"z"))


def test_hard_links_share_inode_within_layer(tmp_path: Path) -> None:
    low = mk(tmp_path / "l", {"f": "data", "d/": None})
    os.link(low / "f", low / "d" / "g")
    idx = build_index([low])
    f, g = idx.lookup(0, b"f"), idx.lookup(idx.lookup(0, b"d"), b"g")
    assert f != g and idx.ino(f) == idx.ino(g)
    assert idx.stat(f)[1] == 2


def test_metadata_is_recorded(tmp_path: Path) -> None:
    low = mk(tmp_path / "l", {"f": "12345"})
    os.chmod(low / "f", 0o4711)
    os.chown(low / "f", 7, 8)
    os.symlink("target", low / "s")
    idx = build_index([low])
    mode, nlink, uid, gid, _rdev, size, _a, mtime, _c, blocks = idx.stat(idx.lookup(0, b"f"))
    st = os.lstat(low / "f")
    assert (mode, nlink, uid, gid, size, mtime, blocks) == (st.st_mode, 1, 7, 8, 5, st.st_mtime_ns, st.st_blocks)
    assert stat.S_ISLNK(idx.mode(idx.lookup(0, b"s")))
    assert idx.real_path(idx.lookup(0, b"f")) == os.fsencode(low / "f")


def test_save_load_roundtrip(stack: list[Path], tmp_path: Path) -> None:
    idx = build_index(stack)
    idx.save(tmp_path / "i.idx")
    back = Index.load(tmp_path / "i.idx")
    assert back is not None and back.count == idx.count
    for i in range(idx.count):
        assert (back.path(i), back.stat(i), back.ino(i), back.layer(i)) == (
            idx.path(i),
            idx.stat(i),
            idx.ino(i),
            idx.layer(i),
        )
    assert paths(back) == paths(idx)
    (tmp_path / "bad.idx").write_bytes(b"garbage")
    assert Index.load(tmp_path / "bad.idx") is None


def test_workdir_cache_is_invalidated_by_lower_changes(stack: list[Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = load_or_build(stack, cache_dir=cache)
    assert len(list(cache.glob("*.idx"))) == 1
    again = load_or_build(stack, cache_dir=cache)
    assert paths(again) == paths(first)
    assert again._mm is not None  # served from the file
    time.sleep(0.01)
    (stack[1] / "etc" / "added").write_text("x")  # a deep directory changes
    rebuilt = load_or_build(stack, cache_dir=cache)
    assert "/etc/added" in paths(rebuilt)
    assert cache_key(stack) != first.key


def test_explicit_cache_path(stack: list[Path], tmp_path: Path) -> None:
    c = tmp_path / "x" / "layers.idx"
    a = load_or_build(stack, cache=c)
    assert c.exists()
    b = load_or_build(stack, cache=c)
    assert b._mm is not None and paths(a) == paths(b)
    assert load_or_build(list(reversed(stack)), cache=c)._mm is None  # other lowers: not reused


def test_probe_lower_agrees_with_index(stack: list[Path]) -> None:
    assert paths(ProbeLower(stack)) == paths(build_index(stack))


def _arrays(idx) -> tuple:
    """Everything an index holds, but atimes (reading a layer's directories moves theirs)."""
    meta = [v for i, v in enumerate(idx.meta) if i % index.META_W != 6]
    return (
        (meta,)
        + tuple(bytes(memoryview(a).cast("B")) for a in (idx.links, idx.name_off, idx.table))
        + (bytes(idx.names),)
    )


@pytest.fixture(scope="module")
def bench_stacks(tmp_path_factory: pytest.TempPathFactory) -> list:
    """Synthetic bench stacks (overrides, whiteouts, opaque dirs, a big merged dir), both forms."""
    root = tmp_path_factory.mktemp("stacks")
    return [
        generate(StackParams(n, 400, seed=3, big_entries=150, large_files=1, large_size=1 << 12), root / f"s{n}")
        for n in (1, 3, 9)
    ]


@pytest.mark.parametrize("jobs", [1, 2])
def test_matches_an_independent_merge(bench_stacks: list, tmp_path: Path, jobs: int) -> None:
    """Order, metadata, layer, inode numbers and lookups against bench.stack.merged_view, built by
    scanning the layers (with a helper process sharing the scan) and from their saved tables."""
    for st in bench_stacks:
        for layers in (st.oci_layers, st.kernel_layers):
            scanned = build_index(layers, jobs=jobs, table_dir=tmp_path / "tables")
            idx = build_index(layers, jobs=jobs, table_dir=tmp_path / "tables")
            assert _arrays(idx) == _arrays(scanned)
            view, hidden = merged_view(layers)
            assert [idx.path(i).decode()[1:] for i in range(1, idx.count)] == list(view)  # BFS, sorted
            first_link: dict[tuple, int] = {}
            for i, (p, want) in enumerate(view.items(), 1):
                got = idx.stat(i)
                assert got[:6] + got[7:] == (
                    want.st_mode,
                    want.st_nlink,
                    want.st_uid,
                    want.st_gid,
                    want.st_rdev,
                    want.st_size,
                    want.st_mtime_ns,
                    want.st_ctime_ns,
                    want.st_blocks,
                ), p
                real = os.lstat(idx.real_path(i))
                assert (real.st_dev, real.st_ino) == (want.st_dev, want.st_ino), p  # served from the right layer
                assert idx.lookup(idx.parent(i), idx.name(i)) == i
                canon = i
                if not stat.S_ISDIR(want.st_mode) and want.st_nlink > 1:
                    canon = first_link.setdefault((idx.layer(i), want.st_ino), i)
                assert idx.ino(i) == canon + 1
                if stat.S_ISDIR(want.st_mode):
                    kids = [idx.name(c) for c in idx.children(i)]
                    assert kids == sorted(kids)
            for p in hidden - set(view):  # (a name hidden below may be visible from above)
                e = 0
                for part in p.split("/"):
                    e = idx.lookup(e, part.encode()) if e >= 0 else -1
                assert e == -1, p


_scan = layertable.scan


def _no_scan(root: bytes) -> None:
    raise AssertionError(f"{root!r} scanned although its table was kept")


def test_shared_scan_is_identical_and_survives_a_failed_helper(
    bench_stacks: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    layers = bench_stacks[-1].oci_layers
    alone = _arrays(build_index(layers, jobs=1))
    assert _arrays(build_index(layers, jobs=2)) == alone

    real_scan = layertable.scan

    def helper_dies(root: bytes):  # the helper fails after taking a layer; this process goes on
        if os.getpid() != parent:
            raise RuntimeError("helper fails")
        return real_scan(root)

    parent = os.getpid()
    monkeypatch.setattr(layertable, "scan", helper_dies)
    assert _arrays(build_index(layers, jobs=2)) == alone

    def no_fork():
        raise OSError("no fork here")

    monkeypatch.setattr(index.os, "fork", no_fork)
    assert _arrays(build_index(layers, jobs=2)) == alone


def test_stacks_share_the_tables_of_their_layers(bench_stacks: list, tmp_path: Path, monkeypatch) -> None:
    """A second stack of the same layers (here: a sub-stack) is merged from the kept tables, without
    scanning a layer, and gives what a scan gives."""
    layers = bench_stacks[-1].oci_layers
    load_or_build(layers, cache=tmp_path / "a.idx")
    assert sorted(tablepack.roots(str(tmp_path / index.TABLE_DIR))) == sorted(map(os.fsencode, layers))
    scanned = _arrays(build_index(layers[2:]))
    monkeypatch.setattr(layertable, "scan", _no_scan)
    got = load_or_build(layers[2:], cache=tmp_path / "b.idx")
    assert got._mm is None and _arrays(got) == scanned


def test_stale_or_broken_tables_are_scanned_again(stack: list[Path], tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    want = paths(build_index(stack))
    load_or_build(stack, cache_dir=cache)
    pack = cache / index.TABLE_DIR / tablepack.PACK
    data = bytearray(pack.read_bytes())
    top = os.fsencode(stack[0].resolve())
    data[data.index(top + b"\0") + len(top) + 30] ^= 0xFF  # inside the top layer's columns
    pack.write_bytes(data)
    scanned: list[bytes] = []
    monkeypatch.setattr(layertable, "scan", lambda root: scanned.append(root) or _scan(root))
    for idx in cache.glob("*.idx"):
        idx.unlink()
    assert paths(load_or_build(stack, cache_dir=cache)) == want
    assert scanned == [top]  # only the damaged table
    pack.write_bytes(data[: len(data) // 2])  # cut short: its directory is gone
    for idx in cache.glob("*.idx"):
        idx.unlink()
    assert paths(load_or_build(stack, cache_dir=cache)) == want
    assert len(tablepack.roots(str(pack.parent))) == 2  # and the pack is whole again
    scanned.clear()
    time.sleep(0.01)
    (stack[1] / "etc" / "added").write_text("x")  # deep key: a changed directory of a layer
    (cache / next(cache.glob("*.idx")).name).unlink()  # (the stack's index would be rebuilt anyway)
    assert "/etc/added" in paths(load_or_build(stack, cache_dir=cache))
    assert scanned == [os.fsencode(stack[1].resolve())]


@pytest.mark.parametrize("jobs", [1, 2])
def test_empty_and_missing_layers(tmp_path: Path, jobs: int) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    idx = build_index([tmp_path / "a", tmp_path / "b", tmp_path / "gone"], jobs=jobs)
    assert idx.count == 1 and list(idx.children(0)) == [] and idx.lookup(0, b"x") == -1
    assert build_index([], jobs=jobs).count == 1
