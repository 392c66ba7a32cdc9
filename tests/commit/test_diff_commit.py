"""diff and commit, checked against independent oracles: a tree comparison, a re-mount, and umoci."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store.store import Store
from tests.helpers import dump_tree, strata

FILES = ["etc/motd", "etc/hostname", "data/keep.txt", "data/modify-me.txt", "bin/hello", "srv/odd-owner"]
DIRS = ["gone", "olddir", "data/long", "srv/shared", "usr/local"]


@pytest.fixture
def image(root: Path, image_layouts: Path) -> str:
    strata(root, "load", "-i", str(image_layouts / "oci/layered"))
    image_id = Store(root).images.all()[0].id
    strata(root, "tag", image_id, "layered:latest")
    return "layered:latest"


class Mounts:
    """Mounts made by a test, all unmounted at the end whatever happens."""

    def __init__(self, root: Path, base: Path) -> None:
        self.root, self.base, self.points, self.made = root, base, [], 0

    def mount(self, target: str) -> Path:
        self.made += 1
        mp = self.base / f"mnt{self.made}"
        mp.mkdir()
        strata(self.root, "mount", target, str(mp))
        self.points.append(mp)
        return mp

    def umount(self, mp: Path) -> None:
        strata(self.root, "umount", str(mp))
        self.points.remove(mp)

    def close(self) -> None:
        for mp in self.points:
            subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True)
            subprocess.run(["umount", "-l", str(mp)], capture_output=True)


@pytest.fixture
def mounts(root: Path, tmp_path: Path) -> Iterator[Mounts]:
    m = Mounts(root, tmp_path)
    yield m
    m.close()


def snapshot_tree(root: Path) -> dict[str, tuple]:
    """path → (type, mode, uid, gid, size, content hash or link target, mtime) for an oracle diff."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            s = os.lstat(p)
            rel = "/" + os.path.relpath(p, root)
            if os.path.islink(p):
                body = os.readlink(p)
            elif os.path.isfile(p):
                body = Path(p).read_bytes()
            else:
                body = None
            out[rel] = (
                s.st_mode,
                s.st_uid,
                s.st_gid,
                s.st_size if not os.path.isdir(p) else 0,
                body,
                s.st_mtime_ns if not os.path.isdir(p) else 0,
            )
    return out


def oracle_diff(before: dict[str, tuple], after: dict[str, tuple]) -> set[str]:
    """Docker's rules from two trees: A/C/D, one D for a deleted directory, parents of changes as C."""
    changes: dict[str, str] = {}
    for p in after:
        if p not in before:
            changes[p] = "A"
        elif before[p] != after[p]:
            changes[p] = "C"
    for p in before:
        if p not in after and os.path.dirname(p) in after or p not in after and os.path.dirname(p) == "/":
            changes[p] = "D"
    for p in list(changes):
        parent = os.path.dirname(p)
        while parent != "/":
            if parent in after and parent not in changes:
                changes[parent] = "C"
            parent = os.path.dirname(parent)
    return {f"{k} {p}" for p, k in changes.items()}


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("write"), st.sampled_from(FILES + ["etc/new.conf", "data/fresh.bin"]), st.binary(max_size=64)
        ),
        st.tuples(st.just("chmod"), st.sampled_from(FILES), st.sampled_from([0o600, 0o755, 0o640])),
        st.tuples(st.just("rm"), st.sampled_from(FILES), st.none()),
        st.tuples(st.just("rmtree"), st.sampled_from(DIRS), st.none()),
        st.tuples(st.just("mkdir"), st.sampled_from(["newdir", "data/sub", "srv/shared/inner"]), st.none()),
        # a lower directory renamed: moved alone, by a redirect, but committed with all it holds
        st.tuples(st.just("mv"), st.sampled_from(DIRS + ["data", "etc"]), st.sampled_from(["moved", "srv/moved"])),
    ),
    min_size=1,
    max_size=6,
)


def apply(mp: Path, steps: list) -> None:
    for op, rel, arg in steps:
        p = mp / rel
        try:
            if op == "write":
                p.write_bytes(arg + b"!")  # never the same bytes as before
            elif op == "chmod":
                os.chmod(p, arg)
            elif op == "rm":
                p.unlink()
            elif op == "rmtree":
                shutil.rmtree(p)
            elif op == "mkdir":
                p.mkdir()
                (p / "file").write_text("in a new dir\n")
            elif op == "mv":
                if not (mp / arg).exists():  # (onto a directory that exists: ENOTEMPTY or itself)
                    os.rename(p, mp / arg)
        except (FileNotFoundError, FileExistsError, NotADirectoryError):
            pass


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(steps=ops)
def test_diff_matches_tree_oracle_and_commit_round_trips(root: Path, image: str, tmp_path_factory, steps: list) -> None:
    base = tmp_path_factory.mktemp("case")
    m = Mounts(root, base)
    name = base.name
    try:
        strata(root, "create", "--name", name, image)
        mp = m.mount(name)
        before = snapshot_tree(mp)
        apply(mp, steps)
        after = snapshot_tree(mp)
        expected = oracle_diff(before, after)
        shown = set(strata(root, "diff", name).stdout.decode().splitlines())
        # chmod to the mode a file already had leaves the tree equal but copies it up: Docker says C
        chmodded = {"/" + rel for op, rel, _ in steps if op == "chmod"}
        parents = {os.path.dirname(p) for p in chmodded} | {os.path.dirname(os.path.dirname(p)) for p in chmodded}
        allowed = {f"C {p}" for p in chmodded | parents}
        assert shown - (allowed - expected) == expected
        container_tree = dump_tree(mp)
        m.umount(mp)
        assert set(strata(root, "diff", name).stdout.decode().splitlines()) == shown  # unmounted: the same
        tag = f"committed:{name}"
        strata(root, "commit", "-m", "random changes", name, tag)
        mp2 = m.mount(tag)
        assert dump_tree(mp2) == container_tree
        m.umount(mp2)
        layout = base / "layout"
        strata(root, "save", "--format", "oci", "-o", str(layout), tag)
        bundle = base / "bundle"
        subprocess.run(["umoci", "unpack", "--image", f"{layout}:{name}", str(bundle)], check=True, capture_output=True)
        assert dump_tree(bundle / "rootfs") == container_tree
    finally:
        m.close()


def test_commit_is_reproducible_and_history_shows_it(root: Path, image: str, mounts: Mounts) -> None:
    cid = strata(root, "create", "--name", "rep", image).stdout.decode().strip()
    mp = mounts.mount("rep")
    (mp / "etc/motd").write_text("hello\n")
    os.unlink(mp / "data/keep.txt")
    os.link(mp / "data/hardlink-a", mp / "data/third-link")
    os.setxattr(mp / "etc/motd", "user.note", b"x")
    mounts.umount(mp)
    first = strata(root, "commit", "-a", "me", "-m", "one", "-c", "ENV X=1", "rep", "r:1").stdout.decode().strip()
    second = strata(root, "commit", "-m", "two", "rep", "r:2").stdout.decode().strip()
    a, b = (json.loads(strata(root, "inspect", t).stdout)[0] for t in ("r:1", "r:2"))
    assert a["RootFS"]["Layers"][-1] == b["RootFS"]["Layers"][-1]  # same state, same diffID
    s = Store(root)
    assert s.resolve("r:1").layers[-1].digest == s.resolve("r:2").layers[-1].digest  # and the same blob
    assert first != second and a["Id"] == first
    assert "X=1" in a["Config"]["Env"] and a["Author"] == "me" and a["Parent"] == Store(root).resolve(image).id
    rows = strata(root, "history", "--format", "{{.ID}}|{{.Comment}}", "r:1").stdout.decode().splitlines()
    assert rows[0] == f"{first[7:19]}|one"
    assert rows[1].split("|")[0] == Store(root).resolve(image).id[7:19]
    assert cid


def test_rmi_refuses_an_image_a_container_uses(root: Path, image: str) -> None:
    strata(root, "create", "--name", "user", image)
    proc = strata(root, "rmi", image, check=False)
    assert proc.returncode == 1 and "container" in proc.stderr.decode()
    out = strata(root, "rmi", "-f", image).stdout.decode().splitlines()
    assert out == [f"Untagged: {image}"]
    mounts_ok = Store(root).images.has(Store(root).containers.find("user").image)
    assert mounts_ok  # the container keeps its (now untagged) image
    strata(root, "rm", "user")
    assert Store(root).containers.all() == []


def test_commit_and_diff_errors(root: Path, image: str) -> None:
    strata(root, "create", "--name", "e1", image)
    for args, needle in [
        (["diff", "nope"], "No such container"),
        (["commit", "nope"], "No such container"),
        (["commit", "e1", "Not A Name"], "invalid reference"),
        (["commit", "-c", "RUN true", "e1"], "not a valid change command"),
    ]:
        before = {r.id for r in Store(root).images.all()}
        proc = strata(root, *args, check=False)
        err = proc.stderr.decode()
        assert proc.returncode == 1 and needle in err and err.count("\n") == 1, (args, err)
        assert {r.id for r in Store(root).images.all()} == before
    c = Store(root).containers.find("e1")
    shutil.rmtree(Store(root).containers.upper(c.id))
    proc = strata(root, "diff", "e1", check=False)
    assert proc.returncode == 1 and "missing" in proc.stderr.decode()


def test_export_then_import_gives_the_container_tree(root: Path, image: str, mounts: Mounts, tmp_path: Path) -> None:
    strata(root, "create", "--name", "ex", image)
    mp = mounts.mount("ex")
    (mp / "etc/added").write_text("added\n")
    tree = dump_tree(mp)
    mounts.umount(mp)
    out = tmp_path / "export.tar"
    strata(root, "export", "-o", str(out), "ex")
    strata(root, "import", str(out), "exported:1")
    mp2 = mounts.mount("exported:1")
    assert dump_tree(mp2) == tree
