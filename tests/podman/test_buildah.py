"""buildah on a containers/storage overlay driver with mount_program = fuse-overlayfs / strata-overlay.

from -> mount -> change files -> umount -> commit -> push to the loopback registry -> pull it back
with skopeo + umoci: the pulled image must show exactly what the container showed.  Each flow runs
with both programs; fuse-overlayfs is the reference, except for its known bug (a directory removed
and re-created in the container: commit writes no whiteouts, the deleted files come back).
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.helpers import dump_tree

from .conftest import CMD_TIMEOUT, PROGRAMS, Storage

# fuse-overlayfs 1.10 (Debian 12): after `rm -r srv; mkdir srv` lstat still finds the old files, so
# the naive diff of `buildah commit` writes no whiteouts for them and they come back in the image
FO_KNOWN_BUG = ("srv/odd-owner", "srv/shared")

STORAGE_ARTIFACTS = ["+ d 0555 0:0 /", "+ d 0755 0:0 home/app", "- d 0750 1000:1000 home/app", "- d 0755 0:0 /"]

# where the pulled image (applied with OCI rules by umoci) differs from the container's view with
# either mount program: the two STORAGE_ARTIFACTS lines are right in the pulled image, and the
# naive diff of containers/storage only sees the new name of a hard link to an unchanged lower
# file (etc/passwd is not in the layer), so the link is lost: same content, nlink 1 each
_PASSWD = "f 0644 0:0 size={} sha256=46c250547927e8357af3e8e9abcbc95f3db9e582c41f1018cb918b779f727a0c etc/passwd"
COMMIT_ARTIFACTS = {f"-{d[1:]}" if d[0] == "+" else f"+{d[1:]}" for d in STORAGE_ARTIFACTS} | {
    f"{sign} {_PASSWD.format(n)}{suffix}"
    for sign, n in (("-", "68 nlink=2"), ("+", "68 nlink=1"))
    for suffix in ("", "-hardlink")
}

# deleted in the container: none of these may exist in the committed image
DELETED = [
    "etc/motd",
    "data/name with spaces.txt",
    "data/big.bin",
    "srv/odd-owner",
    "srv/shared",
    "data/long",
    "data/long/" + "x" * 120 + ".txt",
    "gone",
]


def change_files(m: Path) -> None:
    """What a build step does to the merged tree of the layered image."""
    (m / "etc/hostname").write_text("changed-in-container\n")  # overwrite a lower file
    with open(m / "data/keep.txt", "a") as f:  # append to a lower file (copy-up with data)
        f.write("appended\n")
    (m / "etc/new.conf").write_text("new file\n")  # brand-new file
    (m / "etc/motd").unlink()  # delete lower files
    (m / "data/name with spaces.txt").unlink()
    (m / "data/big.bin").unlink()
    subprocess.run(["rm", "-r", str(m / "srv")], check=True)  # rm -r a lower dir (2 layers) ...
    (m / "srv").mkdir()  # ... and re-create it with a new file
    (m / "srv/after.txt").write_text("srv re-created\n")
    # rename a lower-only directory: mv, as a build step would (fuse-overlayfs answers EXDEV and
    # mv falls back to copy + delete; strata-overlay renames it)
    subprocess.run(["mv", str(m / "data/long"), str(m / "data/long-renamed")], check=True)
    os.chmod(m / "bin/hello", 0o755)  # chmod a lower file (0700 in layer 5)
    os.chmod(m / "vol", 0o700)  # chmod a lower directory
    os.chown(m / "etc/group", 1000, 50)  # chown a lower file
    os.link(m / "etc/passwd", m / "etc/passwd-hardlink")  # hard link to a lower file (copy-up)
    (m / "tmp/pair-a").write_text("pair\n")  # hard link pair made in the container
    os.link(m / "tmp/pair-a", m / "tmp/pair-b")
    os.symlink("../etc/new.conf", m / "data/new-link")
    os.setxattr(m / "data/keep.txt", "user.added", b"in-container")
    os.mkdir(m / "newdir")
    (m / "newdir/inside.txt").write_text("inside\n")


def top_layer(oci: Path) -> dict[str, tuple]:
    """The entries of the last (committed) layer of the single image in an OCI layout: name ->
    (type, mode, uid, gid, size, link target, xattrs); no times (new files differ per run)."""
    index = json.loads((oci / "index.json").read_text())
    mdigest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((oci / "blobs/sha256" / mdigest).read_text())
    ldigest = manifest["layers"][-1]["digest"].split(":")[1]
    out = {}
    with tarfile.open(oci / "blobs/sha256" / ldigest) as t:
        for m in t.getmembers():
            xattrs = sorted((k, v) for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr."))
            name = m.name.removeprefix("./").rstrip("/")
            out[name] = (m.type, oct(m.mode), m.uid, m.gid, m.size, m.linkname, tuple(xattrs))
    return out


def _tree_lines(tree: str) -> list[str]:
    return tree.splitlines()


def _diff(a: str, b: str) -> list[str]:
    la, lb = set(_tree_lines(a)), set(_tree_lines(b))
    return sorted([f"- {x}" for x in la - lb] + [f"+ {x}" for x in lb - la])


def run_flow(s: Storage, host: str, expected_tree: str, tag: str) -> dict:
    """The whole buildah flow on storage *s*; returns what each step showed."""
    res: dict = {}
    pol = f"--signature-policy={s.policy}"
    ctr = s.buildah("from", "--tls-verify=false", pol, "--name", "work", f"{host}/layered:latest")
    assert ctr == "work"
    merged = Path(s.buildah("mount", ctr))
    assert merged.is_dir() and s.fuse_mounts() == [str(merged)]
    res["initial"] = dump_tree(merged)
    # containers/storage creates the container's diff dir 0555, and the upper's root wins in
    # overlay (fuse-overlayfs shows the same): only the "/" line differs from the image's tree
    # containers/storage, not the mount program, makes two lines differ from the OCI tree (the
    # same with fuse-overlayfs): it creates the container's diff dir 0555 (the upper's root wins
    # in overlay), and its untar of layer 5 (home/app/notes.txt without its parent entries)
    # makes home/app 0755 0:0 in that layer, which the topmost-directory rule then shows
    assert _diff(expected_tree, res["initial"]) == STORAGE_ARTIFACTS
    change_files(merged)
    res["container"] = dump_tree(merged)
    res["deleted_lstat"] = [p for p in DELETED if os.path.lexists(merged / p)]
    s.buildah("umount", ctr)
    res["after_umount"] = s.wait_released()
    image = f"localhost/committed-{tag}:latest"
    s.buildah("commit", pol, "--format", "oci", ctr, image)
    res["after_commit"] = s.wait_released()
    dest = f"{host}/committed-{tag}:latest"
    s.buildah("push", "--tls-verify=false", pol, image, f"docker://{dest}")
    s.buildah("rm", ctr)
    res["after_rm"] = s.wait_released()

    # pull the pushed image back with tools that know nothing of strata
    oci, bundle = s.base / "pulled-oci", s.base / "pulled-bundle"
    subprocess.run(
        ["skopeo", "copy", "--src-tls-verify=false", f"--policy={s.policy}", f"docker://{dest}", f"oci:{oci}:latest"],
        check=True,
        capture_output=True,
        timeout=CMD_TIMEOUT,
    )
    subprocess.run(
        ["umoci", "unpack", "--image", f"{oci}:latest", str(bundle)],
        check=True,
        capture_output=True,
        timeout=CMD_TIMEOUT,
    )
    res["layer_meta"] = top_layer(oci)
    res["layer"] = sorted(res["layer_meta"])
    res["pulled"] = dump_tree(bundle / "rootfs")
    res["pulled_deleted"] = [p for p in DELETED if os.path.lexists(bundle / "rootfs" / p)]
    return res


_results: dict[str, dict] = {}


@pytest.fixture
def flow(make_storage, registry):
    def get(name: str) -> dict:
        if name not in _results:
            host, work = registry
            s = make_storage(name)
            _results[name] = run_flow(s, host, (work / "expected/layered.tree").read_text(), name)
        return _results[name]

    return get


@pytest.mark.parametrize("prog", list(PROGRAMS))
def test_commit_push_pull_roundtrip(flow, prog: str) -> None:
    r = flow(prog)
    assert r["after_umount"] == ([], []), "buildah umount left a mount or a mount-program process"
    assert r["after_commit"] == ([], []), "buildah commit left a mount or a mount-program process"
    assert r["after_rm"] == ([], []), "buildah rm left a mount or a mount-program process"
    c = r["container"]  # the changes are visible in the container
    assert "etc/motd" not in c and "srv/after.txt" in c and "data/long-renamed/" in c
    assert "nlink=2 sha256=" in c.split("etc/passwd-hardlink")[0].splitlines()[-1]
    problems = [f"lstat finds deleted {p} in the container" for p in r["deleted_lstat"]]
    problems += [f"pulled image differs: {d}" for d in _diff(r["container"], r["pulled"]) if d not in COMMIT_ARTIFACTS]
    problems += [f"deleted {p} came back in the pushed image" for p in r["pulled_deleted"]]
    if prog == "fuse-overlayfs" and problems and all(any(k in p for k in FO_KNOWN_BUG) for p in problems):
        pytest.xfail(f"known fuse-overlayfs 1.10 bug (rm -r + mkdir: deleted files come back): {problems}")
    assert problems == [], "\n".join(problems)


def test_strata_same_as_fuse_overlayfs(flow) -> None:
    ref, got = flow("fuse-overlayfs"), flow("strata-overlay")
    assert got["initial"] == ref["initial"]
    assert _diff(ref["container"], got["container"]) == []
    # the pushed image: same as fuse-overlayfs's except where fuse-overlayfs is wrong (srv/)
    ref_ok = [d for d in _diff(ref["pulled"], got["pulled"]) if not any(p in d for p in FO_KNOWN_BUG)]
    assert ref_ok == []
    # the committed layer: the same entries, plus the whiteouts fuse-overlayfs fails to produce
    extra = sorted(set(got["layer"]) - set(ref["layer"]))
    missing = sorted(set(ref["layer"]) - set(got["layer"]))
    assert missing == []
    assert all(n.startswith("srv/") for n in extra), extra
    for wh in ("etc/.wh.motd", "data/.wh.name with spaces.txt", "data/.wh.big.bin", "data/.wh.long"):
        assert wh in got["layer"]
    assert not any(n.startswith(".wh..wh.") or "/.wh..wh." in n for n in got["layer"])
    # and each entry both have is the same (type, mode, owner, size, link, xattrs)
    for name in sorted(set(ref["layer"]) & set(got["layer"])):
        assert got["layer_meta"][name] == ref["layer_meta"][name], name
    # nothing private to a mount program leaks into the layer
    for name, meta in got["layer_meta"].items():
        assert not any(k.startswith(("SCHILY.xattr.trusted.", "SCHILY.xattr.user.fuseoverlayfs")) for k, _ in meta[6])
        assert not os.path.basename(name).startswith(".wh..strata"), name
