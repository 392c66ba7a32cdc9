"""strata run as docker run is used: exit codes, stdin, environment, user, workdir, binds,
signals, names, --rm, and the container that stays for diff and ps."""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, strata

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="needs root and /dev/fuse")


@pytest.fixture
def base(root: Path, base_archive: Path) -> str:
    strata(root, "import", str(base_archive), "base:1", "-c", 'CMD ["sh", "-c", "echo from cmd"]')
    return "base:1"


def test_exit_code_stdout_and_stdin_pass_through(root: Path, base: str) -> None:
    proc = strata(root, "run", "--rm", base, "sh", "-c", "echo out; echo err >&2; exit 3", check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, b"out\n", b"err\n")
    proc = strata(root, "run", "--rm", "-i", base, "sh", "-c", "read x; echo got $x", input=b"data\n")
    assert proc.stdout == b"got data\n"
    assert strata(root, "run", "--rm", base).stdout == b"from cmd\n"  # (the image's CMD)


def test_environment_user_workdir_and_binds(root: Path, base: str, tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "in").write_text("host\n")
    shared = tmp_path / "shared"
    script = "read h < /m/in; echo $X $HOME $h; echo $PWD; echo done > /m/out"
    out = strata(root, "run", "--rm", "-e", "X=1", "-w", "/work", "-v", f"{shared}:/m", base, "sh", "-c", script)
    assert out.stdout.decode().splitlines() == ["1 /root host", "/work"]  # (HOME from the image's passwd)
    assert (tmp_path / "shared" / "out").read_text() == "done\n"
    ro = strata(root, "run", "--rm", "-v", f"{shared}:/m:ro", base, "sh", "-c", "echo x > /m/y", check=False)
    assert ro.returncode != 0 and b"Read-only file system" in ro.stderr
    as_app = strata(root, "run", "--rm", "-u", "app", base, "sh", "-c", "echo > /cannot", check=False)
    assert as_app.returncode != 0 and b"Permission denied" in as_app.stderr


def test_docker_exit_codes_for_its_own_errors(root: Path, base: str) -> None:
    missing = strata(root, "run", "--rm", base, "nosuch", check=False)
    assert missing.returncode == 127 and b'exec: "nosuch": executable file not found' in missing.stderr
    strata(root, "run", "--name", "taken", base, "sh", "-c", ":")
    again = strata(root, "run", "--name", "taken", base, "sh", "-c", ":", check=False)
    assert again.returncode == 125 and again.stderr == b'Error: the container name "taken" is already in use\n'
    bad = strata(root, "run", "--rm", "-v", "relative:/x", base, "sh", "-c", ":", check=False)
    assert bad.returncode == 125 and b"invalid volume" in bad.stderr


def test_the_container_stays_for_diff_and_ps(root: Path, base: str) -> None:
    strata(root, "run", "--name", "kept", base, "sh", "-c", "echo hi > /new; exit 4", check=False)
    assert "A /new" in strata(root, "diff", "kept").stdout.decode()
    assert "Exited (4)" in strata(root, "ps", "-a", "--format", "{{.Names}} {{.Status}}").stdout.decode()
    strata(root, "run", "--rm", "--name", "gone", base, "sh", "-c", ":")
    assert "gone" not in strata(root, "ps", "-a").stdout.decode()


def test_sigterm_reaches_the_command(root: Path, base: str) -> None:
    exe = str(REPO / ".venv" / "bin" / "strata")
    script = 'trap "echo caught; exit 7" TERM; echo ready; while :; do :; done'
    proc = subprocess.Popen([exe, "--root", str(root), "run", "--rm", base, "sh", "-c", script], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 7
        assert proc.stdout.read() == b"caught\n"
    finally:
        proc.kill()


@pytest.mark.parametrize("isolation", ["oci", "chroot"])
def test_each_isolation(root: Path, base: str, tmp_path: Path, isolation: str) -> None:
    """runc (a new PID namespace: the command is pid 1) and chroot (buildah's: no PID namespace)."""
    script = "echo $$ $HOME; echo x > /m/y"
    args = ["run", "--rm", "--isolation", isolation, "-v", f"{tmp_path}:/m:ro", base, "sh", "-c", script]
    proc = strata(root, *args, check=False)
    pid, home = proc.stdout.decode().split()
    assert (pid == "1") == (isolation == "oci") and home == "/root"
    assert proc.returncode == 2 and b"Read-only file system" in proc.stderr
    assert (
        strata(
            root, "run", "--rm", "--isolation", isolation, "-u", "app", base, "sh", "-c", "exit 9", check=False
        ).returncode
        == 9
    )


@pytest.mark.parametrize("isolation", ["oci", "chroot"])
def test_stdin_only_with_i_and_a_terminal_with_t(root: Path, base: str, isolation: str) -> None:
    """As docker run: without -i the command reads /dev/null; -t gives it a terminal on all three
    streams (its output then in the terminal's line endings); -it relays our stdin to it."""
    run = ["run", "--rm", "--isolation", isolation]
    plain = strata(root, *run, base, "sh", "-c", "cat; test -t 1 || echo no tty", input=b"unread\n")
    assert plain.stdout == b"no tty\n"
    script = "test -t 0 && test -t 1 && test -t 2 && echo a tty; readlink /proc/self/fd/0; echo err >&2"
    t = strata(root, *run, "-t", base, "sh", "-c", script, input=b"unread\n")
    lines = t.stdout.split(b"\r\n")
    assert lines[0] == b"a tty" and lines[1].startswith(b"/dev/pts/") and lines[2:] == [b"err", b""]
    assert t.stderr == b""
    it = strata(root, *run, "-i", "-t", base, "sh", "-c", "read x; echo got $x; exit 5", input=b"data\n", check=False)
    assert it.returncode == 5 and b"got data\r\n" in it.stdout


@pytest.mark.parametrize("isolation", ["oci", "chroot"])
def test_the_terminal_has_our_size(root: Path, base: str, isolation: str) -> None:
    """Run from a terminal of 33 rows and 77 columns, the command's terminal is as big."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 77, 0, 0))
    exe = str(REPO / ".venv" / "bin" / "strata")
    args = [exe, "--root", str(root), "run", "--rm", "--isolation", isolation, "-t", base, "stty", "size"]
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    try:
        assert proc.wait(timeout=60) == 0
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    finally:
        proc.kill()
        os.close(master)
    assert b"33 77" in out
