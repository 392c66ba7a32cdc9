"""The pack of kept layer tables: round trips, damage, concurrent writers and readers, pruning."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from unionfs import layertable, tablepack
from unionfs.layertable import LayerTable


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> list[LayerTable]:
    """Tables of three small real layers."""
    out = []
    for n in range(3):
        layer = tmp_path_factory.mktemp(f"layer{n}")
        for i in range(n * 5 + 1):
            (layer / f"d{i % 3}").mkdir(exist_ok=True)
            (layer / f"d{i % 3}" / f"f{i}").write_text("x" * i)
        (layer / ".wh.gone").write_text("")
        out.append(layertable.scan(os.fsencode(layer)))
    return out


def _roots(n: int, tag: str = "") -> list[bytes]:
    return [f"/no/such/layer{tag}-{i}".encode() for i in range(n)]


def _keys(roots: list[bytes]) -> list[bytes]:
    return [b"key:" + r for r in roots]


def _check(td: str, roots: list[bytes], want: list[LayerTable | None]) -> None:
    got = tablepack.load(td, roots, _keys(roots))
    assert [g if g is None else g.state() for g in got] == [w if w is None else w.state() for w in want]


def test_round_trip_replace_and_keys(tmp_path: Path, tables: list[LayerTable]) -> None:
    td = str(tmp_path)
    a, b, c = _roots(3)
    (tmp_path / "0123456789abcdef.layer").write_bytes(b"a table of an earlier format")
    assert tablepack.load(td, [a], [b"k"]) == [None]  # no pack yet
    tablepack.save(td, [(a, b"key:" + a, tables[0]), (b, b"key:" + b, tables[1])])
    tablepack.save(td, [(c, b"key:" + c, tables[2])])  # appended
    _check(td, [c, a, b], [tables[2], tables[0], tables[1]])
    tablepack.save(td, [(a, b"key:" + a, tables[2])])  # replaced
    _check(td, [a, b, c], [tables[2], tables[1], tables[2]])
    assert tablepack.load(td, [a, b"/other"], [b"stale key", b"key:/other"]) == [None, None]
    assert sorted(tablepack.roots(td)) == [a, b, c]
    assert sorted(os.listdir(td)) == sorted([tablepack.PACK, tablepack.LOCK])  # the old table is gone


@pytest.fixture
def damaged(tmp_path: Path, tables: list[LayerTable]):
    """A pack of three tables (saved in two appends), and a function that writes a changed copy of
    its bytes, loads the tables, checks that each loaded whole or not at all, and that the next
    save makes the pack whole again."""
    td = str(tmp_path)
    roots, keys = _roots(3), _keys(_roots(3))
    tablepack.save(td, zip(roots[:2], keys[:2], tables[:2], strict=True))
    tablepack.save(td, [(roots[2], keys[2], tables[2])])
    path = tmp_path / tablepack.PACK
    raw = path.read_bytes()

    def check(changed: bytes) -> None:
        path.write_bytes(changed)
        got = tablepack.load(td, roots, keys)
        for g, t in zip(got, tables, strict=True):
            assert g is None or g.state() == t.state()
        tablepack.save(td, [(r, k, t) for r, k, t, g in zip(roots, keys, tables, got, strict=True) if g is None])
        _check(td, roots, tables)

    return raw, check


@pytest.mark.parametrize("xor", [0x01, 0x80])
def test_any_byte_changed_reads_as_missing_never_as_wrong(damaged, xor: int) -> None:
    raw, check = damaged
    for at in range(len(raw)):
        changed = bytearray(raw)
        changed[at] ^= xor
        check(bytes(changed))


def test_a_pack_cut_anywhere_reads_as_missing_never_as_wrong(damaged) -> None:
    raw, check = damaged
    for n in range(len(raw)):
        check(raw[:n])


def _writer(td: str, tag: str, table: LayerTable, rounds: int) -> None:
    roots = _roots(20, tag)
    for _ in range(rounds):
        for i in range(0, 20, 4):  # batches of four, each replacing what the last round saved
            tablepack.save(td, zip(roots[i : i + 4], _keys(roots[i : i + 4]), [table] * 4, strict=True))


def test_concurrent_writers_lose_nothing(tmp_path: Path, tables: list[LayerTable], monkeypatch) -> None:
    """Four processes saving at once (and so compacting each other's dead records) end with every
    table of each, readable; without the writers' lock, their directories overwrite each other."""
    monkeypatch.setattr(tablepack, "COMPACT_FROM", 0)  # compact as soon as half is dead
    td = str(tmp_path)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(td, str(n), tables[n % 3], 5)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    for n in range(4):
        _check(td, _roots(20, str(n)), [tables[n % 3]] * 20)
    assert len(tablepack.roots(td)) == 80
    live = sum(len(layertable.encode(tables[n % 3], r, b"key:" + r)) for n in range(4) for r in _roots(20, str(n)))
    assert os.path.getsize(Path(td) / tablepack.PACK) < 3 * live  # dead records are reclaimed


def _reader(td: str, roots: list[bytes], want: tuple, rounds: int, failures) -> None:
    for _ in range(rounds):
        for g in tablepack.load(td, roots, _keys(roots)):
            if g is None or g.state() != want:
                failures.value += 1


def test_readers_see_a_whole_pack_while_it_is_rewritten(tmp_path: Path, tables: list[LayerTable], monkeypatch) -> None:
    """A reader takes no lock, yet while writers append and compact it always finds every table of
    layers saved before it started."""
    monkeypatch.setattr(tablepack, "COMPACT_FROM", 0)
    td = str(tmp_path)
    stable = _roots(10, "stable")
    tablepack.save(td, zip(stable, _keys(stable), [tables[1]] * 10, strict=True))
    ctx = multiprocessing.get_context("fork")
    failures = ctx.Value("i", 0)
    reader = ctx.Process(target=_reader, args=(td, stable, tables[1].state(), 300, failures))
    writer = ctx.Process(target=_writer, args=(td, "w", tables[2], 30))
    reader.start()
    writer.start()
    writer.join()
    reader.join()
    assert writer.exitcode == 0 and reader.exitcode == 0
    assert failures.value == 0


def test_prune_drops_gone_layers_and_stray_files(tmp_path: Path, tables: list[LayerTable]) -> None:
    td = tmp_path / "tables"
    alive = [os.fsencode(tmp_path / "a"), os.fsencode(tmp_path / "b")]
    for r in alive:
        os.mkdir(r)
    gone = _roots(2)
    tablepack.save(str(td), zip(alive + gone, _keys(alive + gone), tables[:2] * 2, strict=True))
    (td / "0123456789abcdef.layer").write_bytes(b"a table of an earlier format")
    (td / f"{tablepack.PACK}.tmp999").write_bytes(b"left by a writer that died")
    ino = (td / tablepack.PACK).stat().st_ino
    assert tablepack.prune(str(td)) == 4
    assert (td / tablepack.PACK).stat().st_ino == ino  # a new directory appended, not all copied
    assert sorted(os.listdir(td)) == sorted([tablepack.PACK, tablepack.LOCK])
    assert sorted(tablepack.roots(str(td))) == sorted(alive)
    _check(str(td), alive + gone, [*tables[:2], None, None])
    assert tablepack.prune(str(td)) == 0
    assert tablepack.prune(str(tmp_path / "never-made")) == 0
