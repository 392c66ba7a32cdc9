"""images, tag, rmi, image prune, inspect, history and system df, used as a user would."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from cli.format import human_size
from store.store import Store
from tests.helpers import snapshot, strata


@pytest.fixture
def loaded(root: Path, image_layouts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with tiny:latest and layered:latest, loaded from docker archives made by skopeo."""
    work = tmp_path_factory.mktemp("a")
    for name in ("tiny", "layered"):
        out = work / f"{name}.tar"
        subprocess.run(
            ["skopeo", "copy", "-q", f"oci:{image_layouts}/oci/{name}:latest", f"docker-archive:{out}:{name}:latest"],
            check=True,
        )
        strata(root, "load", "-i", str(out))
    return root


def lines(proc: subprocess.CompletedProcess) -> list[str]:
    return proc.stdout.decode().splitlines()


def test_images_table_and_quiet(loaded: Path) -> None:
    s = Store(loaded)
    ids = {t: s.resolve(t).id for t in ("tiny", "layered")}
    table = lines(strata(loaded, "images"))
    assert table[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    # newest first: layered was created 2024-01-01T00:06, tiny earlier (see make-images.sh)
    created = {t: json.loads(s.blobs.read(ids[t]))["created"] for t in ids}
    order = sorted(ids, key=lambda t: created[t], reverse=True)
    assert [row.split()[0] for row in table[1:]] == order
    assert table[1].split()[2] == ids[order[0]][7:19]
    quiet = lines(strata(loaded, "images", "-q"))
    assert quiet == [ids[t][7:19] for t in order]
    assert lines(strata(loaded, "images", "-q", "--no-trunc")) == [ids[t] for t in order]


def test_tag_shows_same_id_and_rmi_untags_then_deletes(loaded: Path) -> None:
    s = Store(loaded)
    tiny = s.resolve("tiny").id
    strata(loaded, "tag", "tiny", "example.com/ns/tiny:v2")
    rows = [r.split() for r in lines(strata(loaded, "images", "--format", "{{.Repository}} {{.Tag}} {{.ID}}"))]
    assert ["example.com/ns/tiny", "v2", tiny[7:19]] in rows and ["tiny", "latest", tiny[7:19]] in rows
    assert lines(strata(loaded, "rmi", "example.com/ns/tiny:v2")) == ["Untagged: example.com/ns/tiny:v2"]
    out = lines(strata(loaded, "rmi", "tiny"))
    assert out[0] == "Untagged: tiny:latest" and out[1] == f"Deleted: {tiny}"
    assert not Store(loaded).images.has(tiny)
    # layered still complete: its layers were not shared with tiny's
    lay = Store(loaded).resolve("layered")
    assert all(Store(loaded).layers.has(c) for c in Store(loaded).chain(lay))


def test_rmi_by_id_with_tags_in_two_repositories_needs_force(loaded: Path) -> None:
    strata(loaded, "tag", "tiny", "other/tiny:1")
    tiny = Store(loaded).resolve("tiny").id
    proc = strata(loaded, "rmi", tiny[7:19], check=False)
    assert proc.returncode == 1 and "must be forced" in proc.stderr.decode()
    out = lines(strata(loaded, "rmi", "-f", tiny[7:19]))
    assert sorted(out[:2]) == ["Untagged: other/tiny:1", "Untagged: tiny:latest"] and f"Deleted: {tiny}" in out


def test_lookup_by_prefix_digest_and_ambiguity(loaded: Path) -> None:
    s = Store(loaded)
    lay = s.resolve("layered").id
    assert s.resolve(lay[7:10]).id == lay
    assert s.resolve(lay).id == lay
    assert json.loads(strata(loaded, "inspect", lay[7:20]).stdout)[0]["Id"] == lay
    proc = strata(loaded, "inspect", "nosuchimage", check=False)
    assert proc.returncode == 1 and "No such image: nosuchimage" in proc.stderr.decode()


def test_unknown_image_errors_leave_store_unchanged(loaded: Path) -> None:
    before = snapshot(loaded)
    for args in (["rmi", "missing:tag"], ["tag", "missing", "x:y"], ["tag", "tiny", "Bad Name"], ["history", "zzz"]):
        proc = strata(loaded, *args, check=False)
        err = proc.stderr.decode()
        assert proc.returncode == 1 and err.count("\n") == 1 and "Traceback" not in err, args
    assert snapshot(loaded) == before


def test_inspect_shape_and_format(loaded: Path) -> None:
    info = json.loads(strata(loaded, "inspect", "layered").stdout)[0]
    for key in (
        "Id",
        "RepoTags",
        "RepoDigests",
        "Parent",
        "Comment",
        "Created",
        "Author",
        "Config",
        "Architecture",
        "Os",
        "Size",
        "RootFS",
        "Metadata",
    ):
        assert key in info
    config = json.loads(Store(loaded).blobs.read(info["Id"]))
    assert info["RootFS"]["Layers"] == config["rootfs"]["diff_ids"]
    assert info["Config"] == config["config"]
    assert lines(strata(loaded, "inspect", "--format", "{{.Id}} {{.Os}}", "layered")) == [f"{info['Id']} linux"]
    assert (
        json.loads(strata(loaded, "image", "inspect", "-f", "{{json .Config.Env}}", "layered").stdout)
        == config["config"]["Env"]
    )


def test_history_follows_config_history(loaded: Path) -> None:
    config = json.loads(Store(loaded).blobs.read(Store(loaded).resolve("layered").id))
    rows = lines(strata(loaded, "history", "--no-trunc", "--format", "{{.ID}}|{{.CreatedBy}}|{{.Comment}}", "layered"))
    expected = [h.get("created_by", "") for h in reversed(config["history"])]
    assert [r.split("|")[1] for r in rows] == expected
    assert rows[0].split("|")[0] == Store(loaded).resolve("layered").id
    assert all(r.split("|")[0] == "<missing>" for r in rows[1:])
    header = lines(strata(loaded, "history", "layered"))[0]
    assert header.split() == ["IMAGE", "CREATED", "CREATED", "BY", "SIZE", "COMMENT"]


def test_filters(loaded: Path) -> None:
    def repos(*args: str) -> list[str]:
        return lines(strata(loaded, "images", "--format", "{{.Repository}}", *args))

    assert repos("-f", "reference=lay*") == ["layered"]
    assert repos("-f", "dangling=true") == []
    assert sorted(repos("-f", "dangling=false")) == ["layered", "tiny"]
    assert repos("-f", "before=layered") == ["tiny"]
    assert repos("-f", "since=tiny") == ["layered"]
    assert repos("-f", "label=stage=final") == ["layered"]
    assert repos("tiny") == ["tiny"]
    proc = strata(loaded, "images", "-f", "bogus=1", check=False)
    assert proc.returncode == 1 and "invalid filter" in proc.stderr.decode()
    json_rows = [json.loads(x) for x in lines(strata(loaded, "images", "--format", "json"))]
    assert {r["Repository"] for r in json_rows} == {"tiny", "layered"}


def test_retag_leaves_old_image_dangling_and_prune_removes_it(loaded: Path, image_layouts: Path) -> None:
    s = Store(loaded)
    tiny = s.resolve("tiny").id
    strata(loaded, "tag", "layered", "tiny:latest")  # the tag now points elsewhere
    dangling = lines(strata(loaded, "images", "-f", "dangling=true", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"))
    assert dangling == [f"<none>:<none> {tiny[7:19]}"]
    out = lines(strata(loaded, "image", "prune", "-f"))
    assert f"deleted: {tiny}" in out and out[-1].startswith("Total reclaimed space: ")
    assert out[-1] != "Total reclaimed space: 0B"
    assert not Store(loaded).images.has(tiny)
    assert lines(strata(loaded, "image", "prune", "-f")) == ["Total reclaimed space: 0B"]


def test_system_df_counts_shared_layers_once(loaded: Path) -> None:
    strata(loaded, "tag", "layered", "copy:1")
    out = lines(strata(loaded, "system", "df"))
    assert out[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    images = out[1].split()
    s = Store(loaded)
    assert images[:2] == ["Images", "2"]
    layers = s.layers.all()
    assert out[3].split()[:2] == ["Layers", str(len(layers))]
    assert "Images space usage:" in strata(loaded, "system", "df", "-v").stdout.decode()


def test_system_df_counts_the_index_cache(loaded: Path, tmp_path: Path) -> None:
    """The compiled index of a mounted image and the layers' tables are counted; the index is
    reclaimable while no container uses its image."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    strata(loaded, "mount", "layered", str(mnt))
    strata(loaded, "umount", str(mnt))
    found = (
        subprocess.run(
            ["find", str(loaded / "index"), "-type", "f", "-printf", "%s %f\n"], capture_output=True, check=True
        )
        .stdout.decode()
        .split("\n")
    )
    sizes = [(int(n), name) for n, name in (x.split(" ", 1) for x in found if x)]
    idx = [n for n, name in sizes if name.endswith(".idx")]
    assert len(idx) == 1 and len(sizes) > 1  # the index and the layers' tables
    total = sum(n for n, _ in sizes)
    row = next(x.split("\t") for x in _df_rows(loaded) if x.startswith("Index cache"))
    assert row[1:] == ["1", "0", human_size(total), f"{human_size(idx[0])} ({100 * idx[0] // total}%)"]


def _df_rows(root: Path) -> list[str]:
    """`system df` lines with columns split on runs of 2+ spaces (the type name has one space)."""
    out = strata(root, "system", "df").stdout.decode().splitlines()
    return ["\t".join(re.split(r"\s{2,}", x.strip())) for x in out]


def test_prune_all_with_a_label_filter_keeps_what_does_not_match(loaded: Path) -> None:
    s = Store(loaded)
    tiny, layered = s.resolve("tiny").id, s.resolve("layered").id
    out = strata(loaded, "image", "prune", "-a", "-f", "--filter", "label=stage=final").stdout.decode()
    assert "untagged: layered:latest" in out and f"deleted: {layered}" in out
    assert Store(loaded).images.has(tiny) and not Store(loaded).images.has(layered)
