"""The command forms of Docker's image guides, typed with `strata` for `docker`: the `image` and
`container` groups, `container prune`, `system prune`, and `import` of a URL."""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from store.store import Store
from tests.helpers import strata

IMAGE_GROUP = "build history import inspect load ls prune pull push rm save tag".split()
CONTAINER_GROUP = "commit create diff export ls mount prune rm run umount".split()


def _commands(help_text: str, section: str = "\nCommands:") -> list[str]:
    lines = help_text.split(section, 1)[1].splitlines()[1:]
    out = []
    for line in lines:
        if not line.startswith("  "):
            break
        out.append(line.split()[0])
    return out


def test_help_lists_the_groups_as_docker_does(root: Path) -> None:
    top = strata(root, "--help").stdout.decode()
    assert _commands(top, "Management Commands:") == ["container", "image", "system"]
    assert {"pull", "images", "ps", "run", "build"} <= set(_commands(top))
    assert _commands(strata(root, "image", "--help").stdout.decode()) == IMAGE_GROUP
    assert _commands(strata(root, "container", "--help").stdout.decode()) == CONTAINER_GROUP
    assert "Usage: strata image ls" in strata(root, "image", "ls", "--help").stdout.decode()
    for group, alias in (("image", "list"), ("container", "list"), ("container", "ps")):
        assert "Usage: strata" in strata(root, group, alias, "--help").stdout.decode()
    r = strata(root, "image", "ps", check=False)
    assert r.returncode == 2 and "No such command 'ps'" in r.stderr.decode()


@pytest.fixture
def loaded(root: Path, image_layouts: Path) -> Path:
    strata(root, "image", "load", "-i", str(image_layouts / "oci" / "layered"))
    (image,) = Store(root).images.all()
    strata(root, "image", "tag", image.id, "layered:latest")
    return root


def test_image_group_carries_the_image_commands(loaded: Path, tmp_path: Path) -> None:
    root = loaded
    strata(root, "image", "tag", "layered:latest", "mine:1")
    ls = strata(root, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}").stdout.decode().split()
    assert sorted(ls) == ["layered:latest", "mine:1"]
    assert json.loads(strata(root, "image", "inspect", "mine:1").stdout)[0]["RepoTags"]
    assert strata(root, "image", "history", "-q", "mine:1").stdout.strip()
    strata(root, "image", "save", "-o", str(tmp_path / "m.tar"), "mine:1")
    strata(root, "image", "rm", "mine:1")
    strata(tmp_path / "other", "image", "load", "-i", str(tmp_path / "m.tar"))
    assert Store(tmp_path / "other").resolve("mine:1").id == Store(root).resolve("layered").id


def test_container_group_and_container_prune(loaded: Path, tmp_path: Path) -> None:
    root = loaded
    keep = strata(root, "container", "create", "--name", "kept", "layered").stdout.decode().strip()
    gone = strata(root, "container", "create", "--name", "stopped", "layered").stdout.decode().strip()
    mp = tmp_path / "mnt"
    mp.mkdir()
    strata(root, "container", "mount", "kept", str(mp))
    try:
        (mp / "written").write_text("kept by a mounted container")
        names = strata(root, "container", "ls", "-a", "--format", "{{.Names}}").stdout.decode().split()
        assert sorted(names) == ["kept", "stopped"]
        assert strata(root, "container", "diff", "kept").stdout.decode().split() == ["A", "/written"]
        strata(root, "container", "commit", "kept", "snap:1")
        strata(root, "container", "export", "-o", str(tmp_path / "fs.tar"), "kept")
        members = subprocess.run(["tar", "-tf", str(tmp_path / "fs.tar")], capture_output=True, text=True, timeout=60)
        assert "written" in {m.strip("./") for m in members.stdout.split()}
        assert len(Store(root).resolve("snap:1").layers) == len(Store(root).resolve("layered").layers) + 1
        asked = strata(root, "container", "prune", input=b"n\n", check=False)
        assert asked.returncode == 1 and "WARNING! This will remove all stopped containers." in asked.stdout.decode()
        assert len(Store(root).containers.all()) == 2  # refused: nothing removed
        out = strata(root, "container", "prune", "-f").stdout.decode().splitlines()
        assert out[:2] == ["Deleted Containers:", gone] and out[-1].startswith("Total reclaimed space: ")
        assert [c.id for c in Store(root).containers.all()] == [keep]  # the mounted one stays
    finally:
        strata(root, "container", "umount", str(mp), check=False)
    strata(root, "container", "rm", "kept")
    assert Store(root).containers.all() == []


def test_system_prune_takes_containers_dangling_images_and_says_what_it_freed(loaded: Path, tmp_path: Path) -> None:
    root = loaded
    strata(root, "import", str(_rootfs(tmp_path)))  # an untagged image: dangling
    strata(root, "create", "--name", "stopped", "layered")
    before = {r.id for r in Store(root).images.all()}
    assert len(before) == 2
    asked = strata(root, "system", "prune", input=b"n\n", check=False)
    text = asked.stdout.decode()
    assert asked.returncode == 1 and "  - all stopped containers\n  - all dangling images\n" in text
    out = strata(root, "system", "prune", "-f").stdout.decode()
    assert "Deleted Containers:" in out and "Deleted Images:" in out
    assert out.splitlines()[-1].startswith("Total reclaimed space: ") and not out.endswith("0B\n")
    s = Store(root)
    assert s.containers.all() == [] and [r.id for r in s.images.all()] == [s.resolve("layered").id]
    out = strata(root, "system", "prune", "-a", "-f").stdout.decode()  # -a: unused tagged ones too
    assert "untagged: layered:latest" in out and Store(root).images.all() == []
    assert "Total reclaimed space: 0B" in strata(root, "system", "prune", "-a", "-f").stdout.decode()


def _rootfs(tmp: Path) -> Path:
    rootfs = tmp / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc/hello").write_text("hi\n")
    tarball = tmp / "rootfs.tar.gz"
    subprocess.run(["tar", "-czf", str(tarball), "-C", str(rootfs), "."], check=True, timeout=60)
    return tarball


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on loopback serving a directory."""
    served = tmp_path / "www"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_import_of_a_url_downloads_and_imports(root: Path, tmp_path: Path, http_dir: tuple[str, Path]) -> None:
    base, served = http_dir
    _rootfs(tmp_path).rename(served / "rootfs.tar.gz")
    r = strata(root, "image", "import", f"{base}/rootfs.tar.gz", "web:1")
    assert r.stderr.decode().splitlines()[0] == f"Downloading from {base}/rootfs.tar.gz"
    assert Store(root).resolve("web:1").id == r.stdout.decode().strip()
    history = strata(root, "history", "--format", "{{.Comment}}", "web:1").stdout.decode().strip()
    assert history == f"Imported from {base}/rootfs.tar.gz"
    for url, why in ((f"{base}/missing.tar", "HTTP 404"), ("http://127.0.0.1:1/x.tar", "")):
        bad = strata(root, "import", url, "web:2", check=False)
        last = bad.stderr.decode().strip().splitlines()
        assert bad.returncode == 1 and last[-1].startswith(f"Error: cannot fetch {url}: {why}")
        assert "Traceback" not in bad.stderr.decode()
    assert [r.id for r in Store(root).images.all()] == [Store(root).resolve("web:1").id]
    s = Store(root)
    assert not any(s.blobs.tmp.iterdir())  # no partial blob or layer from the failed fetches
