"""Each implementation, with its own whiteout form, shows the same merged tree as kernel overlayfs."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import impls as im
from bench.stack import Stack, StackParams, generate, merged_view
from unionfs.mount import is_mounted

from .conftest import needs_root_fuse
from .test_stack import tree

pytestmark = needs_root_fuse


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Stack:
    return generate(
        StackParams(layers=10, files=300, seed=3, big_entries=80, large_files=1, large_size=1 << 18),
        tmp_path_factory.mktemp("stack") / "s",
    )


def _snapshot(impl: im.Impl, stack: Stack, mp: Path, cache: Path | None) -> dict:
    h = impl.mount(stack, mp, cache)
    try:
        return tree(mp)
    finally:
        im.unmount(h)


def test_every_implementation_shows_the_kernel_tree(stack: Stack, tmp_path: Path, cleanup_mounts) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    oracle = _snapshot(im.KernelOverlay(), stack, mp, None)
    view, _hidden = merged_view(stack.oci_layers)
    assert sorted(oracle) == sorted(view)
    assert len(oracle) == stack.entries
    for impl in (im.Strata(), im.StrataNoIndex(), im.FuseOverlayfs()):
        got = _snapshot(impl, stack, mp, tmp_path / f"{impl.name}.idx")
        assert sorted(got) == sorted(oracle), impl.name
        diff = [p for p in oracle if got[p] != oracle[p]]
        assert not diff, f"{impl.name}: {diff[:5]}"
    assert not im.ACTIVE


def test_server_pid_rss_and_clean_unmount(stack: Stack, tmp_path: Path, cleanup_mounts) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    for impl in (im.Strata(), im.FuseOverlayfs()):
        h = impl.mount(stack, mp, tmp_path / "x.idx")
        try:
            assert h.pid is not None and h.mount_seconds > 0
            assert (im.peak_rss_kib(h.pid) or 0) > 0
        finally:
            im.unmount(h)
        assert not im._alive(h.pid)
        assert not is_mounted(mp)


def test_kernel_refuses_more_than_500_layers_and_says_so(tmp_path: Path) -> None:
    layers = [tmp_path / str(i) for i in range(501)]
    st = Stack(None, tmp_path, layers, kernel_layers=layers)
    assert im.KernelOverlay().check(st) == "cannot mount: 501 layers > 500"
    with pytest.raises(im.CannotMount, match="501 layers > 500"):
        im.KernelOverlay().mount(st, tmp_path)
    assert im.KernelOverlay().check(Stack(None, tmp_path, layers[:500], kernel_layers=layers[:500])) is None


def test_container_path_is_a_new_writable_container_each_mount(stack: Stack, tmp_path: Path, cleanup_mounts) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    oracle = _snapshot(im.KernelOverlay(), stack, mp, None)
    for impl in (im.StrataContainer(), im.KernelOverlayContainer(), im.FuseOverlayfsContainer()):
        impl.workspace(tmp_path / "ws")
        for n in range(2):
            h = impl.mount(stack, mp, None)
            try:
                got = tree(mp)
                (mp / "written").write_text(f"{impl.name} {n}")
            finally:
                im.unmount(h)
            assert sorted(got) == sorted(oracle), impl.name  # the second container never sees the first's file
            assert (impl.upper / "written").read_text() == f"{impl.name} {n}"
            assert impl.work.is_dir()
    # strata's containers name their lowers as containers/storage does, so they share the layers' tables
    assert any((tmp_path / "ws" / "shared-tables").iterdir())
    assert not im.ACTIVE
