"""A real distribution image: the mount shows exactly what umoci unpacks, and chroot works in it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from store.store import Store
from tests.helpers import dump_tree, strata


@pytest.fixture(scope="module")
def debian(debian_layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(store root, umoci-unpacked rootfs) for debian:bookworm."""
    base = tmp_path_factory.mktemp("deb")
    root = base / "store"
    layout = debian_layout / "oci/debian"
    strata(root, "load", "-i", str(layout))
    strata(root, "tag", Store(root).images.all()[0].id, "debian:bookworm")
    bundle = base / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:bookworm", str(bundle)], check=True, capture_output=True)
    yield root, bundle / "rootfs"


def test_mounted_image_equals_umoci_unpack(debian: tuple[Path, Path], mnt: Path) -> None:
    root, rootfs = debian
    strata(root, "mount", "debian:bookworm", str(mnt))
    assert dump_tree(mnt) == dump_tree(rootfs)
    strata(root, "umount", str(mnt))
    strata(root, "mount", "debian:bookworm", str(mnt))  # second mount: from the cached index
    assert dump_tree(mnt, with_xattrs=False) == dump_tree(rootfs, with_xattrs=False)


def test_chroot_runs_tools_and_changes_show_in_diff(debian: tuple[Path, Path], mnt: Path) -> None:
    root, _ = debian
    strata(root, "create", "--name", "deb", "debian:bookworm")
    strata(root, "mount", "deb", str(mnt))
    ls = subprocess.run(["chroot", str(mnt), "/bin/ls", "/"], check=True, capture_output=True, text=True).stdout
    assert {"bin", "etc", "usr", "var"} <= set(ls.split())
    dpkg = subprocess.run(["chroot", str(mnt), "dpkg", "-l"], check=True, capture_output=True, text=True).stdout
    assert "base-files" in dpkg and "dpkg" in dpkg
    subprocess.run(
        [
            "chroot",
            str(mnt),
            "/bin/sh",
            "-c",
            "echo hi > /root/note && cp -a /etc/apt /tmp/apt && rm -r /usr/share/man",
        ],
        check=True,
    )
    tar = subprocess.run(["tar", "-C", str(mnt), "-cf", "-", "etc/apt"], check=True, capture_output=True).stdout
    assert len(tar) > 10_000
    strata(root, "umount", "deb")
    diff = strata(root, "diff", "deb").stdout.decode().splitlines()
    assert "A /root/note" in diff and "D /usr/share/man" in diff and "A /tmp/apt" in diff
    assert not any(line.startswith("D /usr/share/man/") for line in diff)
    changes = json.loads(strata(root, "diff", "--format", "json", "deb").stdout)
    assert {"Path": "/root/note", "Kind": 1} in changes
