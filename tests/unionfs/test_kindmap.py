"""KindMap against a plain dict whose subtree is a prefix scan (random operation sequences that keep
the upper's invariant: an entry's parent directory is in the map, and only leaves are dropped)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from unionfs.kindmap import KindMap

paths = st.lists(st.sampled_from([b"a", b"b", b"ab"]), min_size=1, max_size=4).map(lambda c: b"/" + b"/".join(c))
ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), paths, st.integers(1, 4)),
        st.tuples(st.just("drop"), paths),
        st.tuples(st.just("drop_tree"), paths),
        st.tuples(st.just("move_tree"), paths, paths),
    ),
    max_size=40,
)


def _below(model: dict[bytes, int], p: bytes) -> dict[bytes, int]:
    return {k: v for k, v in model.items() if k.startswith(p + b"/")}


@settings(max_examples=300, deadline=None)
@given(ops)
def test_kindmap_matches_a_dict(seq) -> None:
    km, model = KindMap(), {}
    for op in seq:
        parent = op[1].rpartition(b"/")[0] or b"/"
        if op[0] in ("set", "drop") and (parent != b"/" and parent not in model or _below(model, op[1])):
            continue
        if op[0] == "set":
            km.set(op[1], op[2])
            model[op[1]] = op[2]
        elif op[0] == "drop":
            km.drop(op[1])
            model.pop(op[1], None)
        elif op[0] == "drop_tree":
            km.drop_tree(op[1])
            for k in [op[1], *_below(model, op[1])]:
                model.pop(k, None)
        else:
            src, dst = op[1], op[2]
            dparent = dst.rpartition(b"/")[0] or b"/"
            if dst == src or dst.startswith(src + b"/") or (dparent != b"/" and dparent not in model):
                continue  # (rename(2) refuses these)
            below, kind = _below(model, src), model.get(src)
            for k in [src, *below, dst, *_below(model, dst)]:
                model.pop(k, None)
            if kind is not None:
                model[dst] = kind
            model.update({dst + k[len(src) :]: v for k, v in below.items()})
            km.move_tree(src, dst)
        assert len(km) == len(model)
        for p in {*model, *(op[1:2])}:
            assert km.get(p) == model.get(p)
            assert dict(km.subtree(p)) == _below(model, p)
