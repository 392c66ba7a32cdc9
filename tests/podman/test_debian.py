"""A real distribution under buildah: a build step run in Debian bookworm (useradd, rm -rf + mkdir of
big lower directories, mv of a lower directory, cp -a, dpkg), then commit, push and pull back.

With both mount programs the container's tree and the pulled image's tree must be identical, and
strata-overlay's the same as fuse-overlayfs's.  Needs the Debian image (tests.conftest.debian_layout
builds it with debootstrap, ~40 s; skipped without a Debian mirror).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import dump_tree

from .conftest import CMD_TIMEOUT, PROGRAMS, Storage

BUILD_STEP = r"""set -e
rm -rf /usr/share/doc; mkdir -p /usr/share/doc/app; echo doc > /usr/share/doc/app/README
rm -rf /usr/share/locale; mkdir /usr/share/locale
useradd -m -u 1500 app
echo hello > /home/app/hi; chown app:app /home/app/hi
cp -a /etc/apt /etc/apt.bak
mv /var/log /var/log.old; mkdir /var/log
ln -s /usr/bin/bash /usr/local/bin/mybash
chmod -R go-w /usr/share/zoneinfo
rm -f /etc/motd; echo new motd > /etc/motd
dpkg -l > /tmp/dpkg.txt
touch -d 2020-01-01 /etc/debian_version
"""

_results: dict[str, dict] = {}


@pytest.fixture(scope="module")
def debian_pushed(debian_layout: Path, registry: tuple[str, Path]) -> str:
    """debian:bookworm in the loopback registry of this package's tests."""
    host = registry[0]
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--dest-tls-verify=false",
            f"oci:{debian_layout / 'oci/debian'}:bookworm",
            f"docker://{host}/debian:bookworm",
        ],
        check=True,
        capture_output=True,
        timeout=CMD_TIMEOUT,
    )
    return f"{host}/debian:bookworm"


def debian_flow(s: Storage, image: str, host: str, tag: str) -> dict:
    pol = f"--signature-policy={s.policy}"
    ctr = s.buildah("from", "--tls-verify=false", pol, "--name", "deb", image)
    res = {"run": s.buildah("run", "--network=none", ctr, "--", "bash", "-c", BUILD_STEP)}
    res["released_after_run"] = s.wait_released()
    merged = Path(s.buildah("mount", ctr))
    res["container"] = dump_tree(merged)
    s.buildah("umount", ctr)
    s.buildah("commit", pol, ctr, f"localhost/deb-{tag}")
    res["released_after_commit"] = s.wait_released()
    dest = f"docker://{host}/deb-{tag}:latest"
    s.buildah("push", "--tls-verify=false", pol, f"localhost/deb-{tag}", dest)
    oci, bundle = s.base / "oci", s.base / "bundle"
    for cmd in (
        ["skopeo", "copy", "--src-tls-verify=false", f"--policy={s.policy}", dest, f"oci:{oci}:latest"],
        ["umoci", "unpack", "--image", f"{oci}:latest", str(bundle)],
    ):
        subprocess.run(cmd, check=True, capture_output=True, timeout=CMD_TIMEOUT)
    res["pulled"] = dump_tree(bundle / "rootfs")
    return res


@pytest.fixture
def flow(make_storage, registry, debian_pushed):
    def get(name: str) -> dict:
        if name not in _results:
            _results[name] = debian_flow(make_storage(name), debian_pushed, registry[0], name)
        return _results[name]

    return get


@pytest.mark.parametrize("prog", list(PROGRAMS))
def test_debian_build_step_commit_push_pull(flow, prog: str) -> None:
    r = flow(prog)
    assert r["released_after_run"] == ([], []) and r["released_after_commit"] == ([], [])
    c, p = r["container"].splitlines(), r["pulled"].splitlines()
    assert c[0] == "d 0555 0:0 /" and p[0] == "d 0755 0:0 /"  # containers/storage's 0555 diff dir
    assert c[1:] == p[1:]
    assert "usr/share/doc/app/README" in r["container"] and "usr/share/doc/bash" not in r["container"]
    assert " home/app/hi" in r["container"] and "var/log.old/" in r["container"]


def test_debian_strata_same_as_fuse_overlayfs(flow) -> None:
    ref, got = flow("fuse-overlayfs"), flow("strata-overlay")
    assert got["container"] == ref["container"]
    assert got["pulled"] == ref["pulled"]
