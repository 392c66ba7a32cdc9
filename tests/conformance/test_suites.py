"""The public conformance suites of ../shared/conformance, run against strata-overlay as CI runs them.

pjdfstest (POSIX system calls) runs inside a writable mount; unionmount-testsuite (overlay
semantics) drives strata-overlay through mount(8), in its relaxed (``--no-xdev``) and strict
(``--layers 3 --verify``: inode numbers and layers) forms.  Each run is bounded in time.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import SHARED
from unionfs.mount import MountSpec, mount, unmount

CONFORMANCE = SHARED / "conformance"
PJDFSTEST_BUILD = Path(__file__).resolve().parents[2] / ".venv" / "pjdfstest"

pytestmark = [
    pytest.mark.skipif(not CONFORMANCE.is_dir(), reason=f"{CONFORMANCE} is not there"),
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="needs root and /dev/fuse"),
]


@pytest.fixture(scope="session")
def pjdfstest() -> Path:
    """pjdfstest built from the shared copy (once; kept in .venv/)."""
    if not (PJDFSTEST_BUILD / "pjdfstest").exists():
        shutil.rmtree(PJDFSTEST_BUILD, ignore_errors=True)
        shutil.copytree(CONFORMANCE / "pjdfstest", PJDFSTEST_BUILD)
        for dirpath, _dirs, files in os.walk(PJDFSTEST_BUILD):  # (CI's shared copy is read-only)
            for n in [".", *files]:
                p = os.path.join(dirpath, n)
                os.chmod(p, os.stat(p).st_mode | 0o200)
        for cmd in (["autoreconf", "-ifs"], ["./configure"], ["make", "pjdfstest"]):
            r = subprocess.run(cmd, cwd=PJDFSTEST_BUILD, capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}"
    return PJDFSTEST_BUILD


def test_pjdfstest(pjdfstest: Path, tmp_path: Path) -> None:
    d = {k: tmp_path / k for k in ("low", "up", "work", "mnt")}
    for p in d.values():
        p.mkdir(mode=0o755)
    os.chmod(tmp_path, 0o755)  # the tests switch to other uids, which must reach the mount
    (d["low"] / "sub").mkdir()
    (d["low"] / "file").write_text("lower\n")
    os.symlink("file", d["low"] / "link")
    os.mkfifo(d["low"] / "fifo")
    mount(MountSpec([d["low"]], d["up"], d["work"], allow_other=True), d["mnt"])
    try:
        os.chmod(d["mnt"], 0o755)
        r = subprocess.run(
            ["prove", "-r", str(pjdfstest / "tests")],
            cwd=d["mnt"],
            capture_output=True,
            text=True,
            timeout=1200,
            stdin=subprocess.DEVNULL,
        )
    finally:
        unmount(d["mnt"])
    failing = re.findall(r"^(\S+\.t)\s+\(Wstat", r.stdout, re.M)
    assert "Result: PASS" in r.stdout, f"pjdfstest files failing: {failing}\n{r.stdout[-3000:]}"
    assert re.search(r"Files=238,", r.stdout), r.stdout[-1000:]


def _unionmount(*args: str) -> tuple[dict[str, str], str]:
    r = subprocess.run(
        [
            "bash",
            str(CONFORMANCE / "unionmount.sh"),
            "--suite",
            str(CONFORMANCE / "unionmount-testsuite"),
            "--fuse-type",
            "strata-overlay",
            "--timeout",
            "120",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=1500,
        stdin=subprocess.DEVNULL,
    )
    results = dict((m[1], m[0]) for m in re.findall(r"^(PASS|FAIL)\s+(\S+)", r.stdout, re.M))
    return results, r.stdout + r.stderr


@pytest.mark.skipif(shutil.which("strata-overlay") is None, reason="strata-overlay is not on PATH")
def test_unionmount_no_xdev() -> None:
    results, out = _unionmount("--no-xdev")
    assert len(results) == 58, out[-3000:]
    failed = sorted(t for t, v in results.items() if v == "FAIL")
    assert not failed, f"failing: {failed}\n{out[-3000:]}"


@pytest.mark.skipif(shutil.which("strata-overlay") is None, reason="strata-overlay is not on PATH")
def test_unionmount_strict() -> None:
    results, out = _unionmount("--no-xdev", "--layers", "3", "--flag", "--verify")
    assert len(results) == 58, out[-3000:]
    failed = sorted(t for t, v in results.items() if v == "FAIL")
    assert not failed, f"failing: {failed}\n{out[-3000:]}"
