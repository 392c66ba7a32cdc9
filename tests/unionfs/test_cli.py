"""The strata-overlay command line (fuse-overlayfs compatible)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli.overlay import UsageError, parse_args, split_escaped
from unionfs.mount import mount_state

from .conftest import needs_fuse

PROG = [sys.executable, "-c", "import sys; from cli.overlay import main; sys.exit(main())"]


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    d = {k: tmp_path / k for k in ("l1", "l2", "up", "work", "mnt")}
    for p in d.values():
        p.mkdir()
    (d["l1"] / "top").write_text("t")
    (d["l2"] / "bottom").write_text("b")
    return d


def test_split_escaped() -> None:
    assert split_escaped(r"/a\:b:/c", ":") == ["/a:b", "/c"]
    assert split_escaped("/a", ":") == ["/a"]
    assert split_escaped(r"/x\\:/y", ":") == ["/x\\", "/y"]


def test_parse_container_storage_forms(dirs, tmp_path) -> None:
    link = tmp_path / "L1"
    link.symlink_to("l1")  # relative symlink, as in $G/overlay/l/
    lower = f"{link}:{dirs['l2']}"
    for tail in (",,volatile", ",", ""):
        a = parse_args(["-o", f"lowerdir={lower},upperdir={dirs['up']},workdir={dirs['work']}{tail}", str(dirs["mnt"])])
        assert a["lowers"] == [os.fsencode(dirs["l1"].resolve()), os.fsencode(dirs["l2"].resolve())]
        assert [st.st_ino for st in a["lower_stats"]] == [dirs["l1"].stat().st_ino, dirs["l2"].stat().st_ino]
        assert a["upper"] == dirs["up"].resolve() and not a["foreground"]
    ro = parse_args(["-o", f"lowerdir={lower}", str(dirs["mnt"])])
    assert ro["upper"] is None and ro["work"] is None


def test_parse_escaped_colon_and_ignored_options(dirs, tmp_path) -> None:
    odd = tmp_path / "with:colon"
    odd.mkdir()
    opts = (
        f"lowerdir={str(odd).replace(':', chr(92) + ':')}:{dirs['l2']},upperdir={dirs['up']},"
        f"workdir={dirs['work']},fsync=0,noacl,xino=auto,timeout=5,default_permissions,"
        "uidmapping=0:0:65536,gidmapping=0:0:100:100:100:50,threaded=1"
    )
    a = parse_args(["-f", "-o", opts, str(dirs["mnt"])])
    assert a["lowers"][0] == os.fsencode(odd.resolve()) and a["foreground"]
    # mount.fuse3 style: SOURCE MOUNTPOINT -o OPTS
    b = parse_args(["strata-overlay", str(dirs["mnt"]), "-o", f"lowerdir={dirs['l1']},allow_other"])
    assert b["mountpoint"] == dirs["mnt"] and b["allow_other"]
    assert parse_args(["-d", "-o", f"lowerdir={dirs['l1']}", str(dirs["mnt"])])["debug"]
    # SELinux label from containers/storage: quoted, with a comma inside
    c = parse_args(
        ["-o", f'lowerdir={dirs["l1"]},context="system_u:object_r:container_file_t:s0:c1,c2"', str(dirs["mnt"])]
    )
    assert c["lowers"] == [os.fsencode(dirs["l1"].resolve())]


@pytest.mark.parametrize(
    "opts, message",
    [
        ("lowerdir={l1},frobnicate", "unknown option 'frobnicate'"),
        ("lowerdir={l1},uidmapping=0:1000:1", "only identity"),
        ("lowerdir={l1},squash_to_root", "not supported"),
        ("lowerdir=/does/not/exist", "does not exist"),
        ("upperdir={up},workdir={work}", "no lowerdir"),
        ("lowerdir={l1},upperdir={up}", "together"),
    ],
)
def test_parse_errors(dirs, opts, message) -> None:
    with pytest.raises(UsageError, match=message):
        parse_args(["-o", opts.format(**{k: str(v) for k, v in dirs.items()}), str(dirs["mnt"])])


def test_bad_input_one_line_nonzero_nothing_mounted(dirs) -> None:
    for opts in (f"lowerdir={dirs['l1']},bogus=1", "lowerdir=/nope"):
        p = subprocess.run([*PROG, "-o", opts, str(dirs["mnt"])], capture_output=True, text=True, timeout=30)
        assert p.returncode != 0
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("strata-overlay: ")
        assert mount_state(dirs["mnt"]) == "unmounted"


def test_upper_on_read_only_fs_and_workdir_elsewhere_are_refused(dirs, tmp_path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "up").mkdir()
    (ro / "work").mkdir()
    subprocess.run(["mount", "--bind", "-o", "ro", str(ro), str(ro)], check=True)
    other = Path("/dev/shm") / f"strata-work-{os.getpid()}"
    other.mkdir(exist_ok=True)
    try:
        for opts, needle in (
            (f"lowerdir={dirs['l1']},upperdir={ro / 'up'},workdir={ro / 'work'}", "read-only"),
            (f"lowerdir={dirs['l1']},upperdir={dirs['up']},workdir={other}", "same filesystem"),
        ):
            p = subprocess.run([*PROG, "-o", opts, str(dirs["mnt"])], capture_output=True, text=True, timeout=30)
            lines = p.stderr.strip().splitlines()
            assert p.returncode != 0 and len(lines) == 1 and needle in lines[0], p.stderr
            assert mount_state(dirs["mnt"]) == "unmounted"
    finally:
        subprocess.run(["umount", str(ro)], check=True)
        other.rmdir()


@needs_fuse
def test_mounts_like_fuse_overlayfs(dirs, mounts) -> None:
    opts = f"lowerdir={dirs['l1']}:{dirs['l2']},upperdir={dirs['up']},workdir={dirs['work']},,volatile"
    mounts.add(dirs["mnt"])
    p = subprocess.run(
        [*PROG, "-o", opts, str(dirs["mnt"])], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(dirs["mnt"])) == ["bottom", "top"]
    (dirs["mnt"] / "new").write_text("n")
    assert (dirs["up"] / "new").read_text() == "n"
    info = [x for x in open("/proc/self/mountinfo") if f" {dirs['mnt']} " in x][0]
    assert "allow_other" in info and "default_permissions" in info


@needs_fuse
def test_read_only_without_upperdir(dirs, mounts) -> None:
    mounts.add(dirs["mnt"])
    p = subprocess.run(
        [*PROG, "-o", f"lowerdir={dirs['l1']}:{dirs['l2']}", str(dirs["mnt"])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    with pytest.raises(OSError):
        (dirs["mnt"] / "x").write_text("x")


@needs_fuse
def test_devices_and_setid_as_fuse_overlayfs_unless_turned_off(dirs, mounts) -> None:
    """A container's rootfs keeps its device nodes and set-id programs; -o nodev/nosuid are honoured."""
    mounts.add(dirs["mnt"])
    for extra, want in (("", 0), (",nodev", os.ST_NODEV), (",nosuid,nodev", os.ST_NOSUID | os.ST_NODEV)):
        cmd = [*PROG, "-o", f"lowerdir={dirs['l1']}:{dirs['l2']}{extra}", str(dirs["mnt"])]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        try:
            assert os.statvfs(dirs["mnt"]).f_flag & (os.ST_NODEV | os.ST_NOSUID) == want, extra
        finally:
            subprocess.run(["umount", str(dirs["mnt"])], check=True)


@needs_fuse
@pytest.mark.skipif(shutil.which("mount.fuse3") is None, reason="needs mount.fuse3")
def test_mount_t_fuse(dirs, mounts) -> None:
    """mount(8) -> mount.fuse3 -> strata-overlay SOURCE MOUNTPOINT -o OPTS."""
    exe = shutil.which("strata-overlay") or str(Path(sys.executable).parent / "strata-overlay")
    if not os.access(exe, os.X_OK):
        pytest.skip("strata-overlay console script not installed")
    mounts.add(dirs["mnt"])
    if shutil.which("strata-overlay", path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"):
        cmd = ["mount", "-t", "fuse.strata-overlay", "strata-overlay", str(dirs["mnt"])]
    else:  # not on the system PATH mount(8) uses: name the program in the source (type#source)
        cmd = ["mount", "-t", "fuse", f"{exe}#strata-overlay", str(dirs["mnt"])]
    p = subprocess.run([*cmd, "-o", f"lowerdir={dirs['l1']}:{dirs['l2']}"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(dirs["mnt"])) == ["bottom", "top"]
    assert mount_state(dirs["mnt"]) == "mounted"
