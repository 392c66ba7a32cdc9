"""Stack generation is deterministic; the kernel-form conversion and the merged view agree."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from bench.stack import OPQ, WH, StackParams, generate, merged_view

SMALL = dict(layers=10, files=300, big_entries=50, large_files=1, large_size=1 << 16)


def tree(root: Path) -> dict:
    """Everything about a tree except timestamps: type, mode, size, content, link target, xattrs."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rec = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_rdev)
            if stat.S_ISREG(st.st_mode):
                rec += (Path(p).read_bytes(),)
            elif stat.S_ISLNK(st.st_mode):
                rec += (os.readlink(p),)
            else:
                rec += (sorted(os.listxattr(p, follow_symlinks=False)),)
            out[os.path.relpath(p, root)] = rec
    return out


def test_same_seed_same_trees_different_seed_different(tmp_path: Path) -> None:
    a = generate(StackParams(seed=7, **SMALL), tmp_path / "a")
    b = generate(StackParams(seed=7, **SMALL), tmp_path / "b")
    c = generate(StackParams(seed=8, **SMALL), tmp_path / "c")
    assert tree(a.root / "overlay") == tree(b.root / "overlay")
    assert tree(a.root / "kernel") == tree(b.root / "kernel")
    assert tree(a.root / "overlay") != tree(c.root / "overlay")
    assert (a.dirs, a.files, a.missing, a.large) == (b.dirs, b.files, b.missing, b.large)
    assert a.layers == 10 and [p.parent.name for p in a.oci_layers] == [str(i) for i in reversed(range(10))]
    assert [os.path.realpath(x) for x in a.links] == [os.path.realpath(p) for p in a.oci_layers]
    assert {len(x.name) for x in a.links} == {26} and {x.parent.name for x in a.links} == {"l"}
    # no hard links the layers would not have (kernel form copied, not linked)
    assert {os.lstat(os.path.join(d, n)).st_nlink for d, _s, fs in os.walk(a.root) for n in fs} == {1}


def test_stack_has_overrides_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    st = generate(StackParams(seed=3, **SMALL), tmp_path / "s")
    names = [n for p in st.oci_layers for _d, _s, fs in os.walk(p) for n in fs]
    assert OPQ in names
    assert any(n.startswith(WH) and n != OPQ for n in names)
    kernel_files = [os.path.join(d, n) for p in st.kernel_layers for d, _s, fs in os.walk(p) for n in fs]
    assert not any(os.path.basename(f).startswith(WH) for f in kernel_files)
    assert any(stat.S_ISCHR(os.lstat(f).st_mode) for f in kernel_files)
    opaque = [d for p in st.kernel_layers for d, _s, _f in os.walk(p) if "trusted.overlay.opaque" in os.listxattr(d)]
    assert opaque
    # later layers override earlier files
    seen: dict[str, int] = {}
    overridden = 0
    for p in st.oci_layers:
        for d, _s, fs in os.walk(p):
            for n in fs:
                rel = os.path.relpath(os.path.join(d, n), p)
                if not n.startswith(WH):
                    overridden += rel in seen
                    seen[rel] = 1
    assert overridden > 0
    assert st.big_entries == 50 and len(st.large) == 1


def test_merged_view_is_the_same_in_both_forms(tmp_path: Path) -> None:
    st = generate(StackParams(seed=5, **SMALL), tmp_path / "s")
    v1, h1 = merged_view(st.oci_layers)
    v2, h2 = merged_view(st.kernel_layers)
    assert list(v1) == list(v2)
    assert all(stat.S_IFMT(v1[p].st_mode) == stat.S_IFMT(v2[p].st_mode) for p in v1)
    assert h1 == h2 and h1
    assert not any(p.startswith(WH) or "/.wh." in p for p in v1)
    assert set(st.missing).isdisjoint(v1)
