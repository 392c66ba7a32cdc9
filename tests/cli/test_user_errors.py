"""Errors a user can cause end in one line and a non-zero exit, and leave nothing behind; files a
command writes get the mode the umask gives (as `tar` and `docker save`)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from store.store import Store
from tests.helpers import REPO, strata


@pytest.fixture
def image(root: Path, image_layouts: Path) -> str:
    strata(root, "load", "-i", str(image_layouts / "oci" / "layered"))
    strata(root, "tag", Store(root).images.all()[0].id, "layered:latest")
    return "layered:latest"


def _one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    err = proc.stderr.decode()
    assert proc.returncode == 1 and err.startswith("Error: ") and err.count("\n") == 1, err
    assert needle in err and "Traceback" not in err, err


def test_a_template_field_rows_do_not_have_is_an_error(root: Path, image: str) -> None:
    _one_line_error(strata(root, "images", "--format", "{{.Bogus}}", check=False), "can't evaluate field Bogus")
    strata(root, "create", "--name", "c1", image)  # (a template is executed on rows only, as Docker's)
    _one_line_error(strata(root, "ps", "-a", "--format", "table {{.Nope}}", check=False), "can't evaluate field Nope")
    assert strata(root, "images", "--format", "{{.Repository}}").stdout == b"layered\n"


def test_mount_errors_leave_no_container(root: Path, image: str, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    proc = strata(root, "mount", "--read-write", image, str(missing), check=False)
    _one_line_error(proc, f"mountpoint {missing} does not exist")
    assert Store(root).containers.all() == []
    (tmp_path / "mp").mkdir()
    proc = strata(root, "mount", "--upper", str(tmp_path / "u"), image, str(tmp_path / "mp"), check=False)
    _one_line_error(proc, "--upper and --work go with --lower")
    assert Store(root).containers.all() == [] and not (tmp_path / "u").exists()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_output_files_follow_the_umask(root: Path, image: str, tmp_path: Path, umask: int) -> None:
    strata(root, "create", "--name", "c1", image)
    exe = str(REPO / ".venv" / "bin" / "strata")
    for args, out in ((["save", "-o"], tmp_path / "img.tar"), (["export", "-o"], tmp_path / "ctr.tar")):
        target = "c1" if args[0] == "export" else image
        subprocess.run(
            [exe, "--root", str(root), *args, str(out), target],
            check=True,
            capture_output=True,
            timeout=300,
            preexec_fn=lambda: os.umask(umask),
        )
        assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask, args
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # (no temporary left)
