"""strata build against buildah: the same Dockerfile and context built by both (buildah bud
--isolation chroot --layers --format docker: Docker's format, where SHELL, ONBUILD and HEALTHCHECK
count), then both images unpacked by umoci: the same tree (owners, modes,
xattrs, link targets), the same config fields, the same number of layers."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, dump_tree, snapshot, strata

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/fuse"), reason="needs root and /dev/fuse"),
    pytest.mark.skipif(not (shutil.which("buildah") and shutil.which("umoci")), reason="needs buildah and umoci"),
]
EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
BUILDAH_STUBS = ("hostname", "hosts", "resolv.conf")
CONFIG_FIELDS = (
    "Env",
    "Cmd",
    "Entrypoint",
    "WorkingDir",
    "User",
    "Labels",
    "ExposedPorts",
    "Volumes",
    "StopSignal",
)
DOCKER_ONLY = ("Healthcheck", "OnBuild")

CASES = {
    "scratch-copy": (
        "FROM scratch\n"
        "COPY etc /etc\n"
        "COPY --chmod=751 --chown=7:8 bin/tool /usr/local/bin/\n"
        'COPY ["a b.txt", "c*.txt", "/data/"]\n'
        'ENV A=1 B="two words"\n'
        "ENV C=${A}-x\n"
        'LABEL org.example.k=v other="x y"\n'
        "WORKDIR /srv\n"
        "WORKDIR sub\n"
        "COPY a_?.txt rel.txt\n"
        "EXPOSE 80 53/udp\n"
        "VOLUME /var/cache /data\n"
        "STOPSIGNAL SIGINT\n"
        "USER 1000:1000\n"
        'ENTRYPOINT ["/usr/local/bin/tool"]\n'
        'CMD ["--help"]\n'
    ),
    "run-shell": (
        "ARG BASE=base:1\n"
        "FROM $BASE\n"
        "ARG GREETING=hello\n"
        'RUN echo "$GREETING world" > /out.txt\n'
        "WORKDIR /app\n"
        'RUN echo made > made && echo "$GREETING" > again\n'
        "ENV PATH=/bin\n"
        "CMD echo $PATH\n"
    ),
    "env-forms": (
        "FROM scratch\n"
        "ENV LEGACY a value with spaces\n"
        'ENV X=1 Y="$X and more" Z=${UNSET:-fallback} W=${X:+set}\n'
        'LABEL a=1\nLABEL b="2 3" a=4\n'
        "COPY c1.txt /$X/${Z}.txt\n"
    ),
    "args": (
        "ARG GLOBAL=g1\n"
        "FROM scratch AS one\n"
        "ARG GLOBAL\n"
        "ARG LOCAL=l1\n"
        "ENV SEEN=${GLOBAL}-${LOCAL}\n"
        "FROM scratch\n"
        "ARG LOCAL\n"
        "ENV SEEN=[${GLOBAL}][${LOCAL}]\n"
        "COPY c1.txt /f-${LOCAL}-${GLOBAL}\n"
    ),
    "run-config": (
        "FROM base:1\n"
        "ENTRYPOINT echo entry\n"  # (before SHELL: buildah puts a later shell form under sh -c, Docker under SHELL)
        'SHELL ["/bin/sh", "-e", "-c"]\n'
        "WORKDIR /a\nWORKDIR b\nWORKDIR ../c\n"
        'RUN echo "$PWD" > where\n'
        "USER root:root\n"
        "STOPSIGNAL 9\n"
        'VOLUME ["/v1", "/v2"]\n'
        "EXPOSE 8080/tcp 9000-9001/udp\n"
    ),
    "add-tar": "FROM scratch\nADD layer.tar /unpacked/\nADD layer.tar.gz /gz\nCOPY layer.tar /kept/\n",
    "copy-chown": (
        "FROM base:1\n"
        "COPY --chown=app etc /home/app/etc\n"
        "COPY --chown=app:root --chmod=600 c1.txt /home/app/\n"
        "COPY --chown=12:34 bin /opt/bin\n"
    ),
    "from-image": "FROM scratch\nCOPY --from=base:1 /etc/passwd /bin/sh /from-image/\n",
    "from-index": "FROM base:1\nRUN echo one > /one\nFROM scratch\nCOPY --from=0 /one /copied\n",
    "copy-dirs": "FROM scratch\nCOPY etc/ /e1/\nCOPY etc /e2\nCOPY etc/sub /e2/\nADD etc /added\n",
    "copy-rename": "FROM scratch\nCOPY c1.txt /renamed.txt\nCOPY c?.txt a* /many/\nCOPY c1.txt /deep/er/\n",
    "workdir-create": "FROM base:1\nWORKDIR /new/deep\nRUN echo here > f\nWORKDIR /\nRUN echo $PWD > /pwd\n",
    "escape-directive": "# escape=`\nFROM base:1\nRUN echo a `\n  b\\c > /ab\n",
    "continuations": "FROM base:1\nRUN echo one \\\n# a comment inside\n  two \\\n\n  three > /words\n",
    "stage-chain": ("FROM base:1 AS a\nRUN echo a > /a\nFROM a AS b\nRUN echo b > /b\nFROM b\nRUN echo c > /c\n"),
    "env-in-run": (
        'FROM base:1\nARG V=default\nENV E=env-$V\nRUN echo "$E $V" > /seen\nENV E=again\nRUN echo $E >> /seen\n'
    ),
    "cmd-forms": 'FROM scratch\nCMD echo shell form\nENTRYPOINT ["/bin/x", "y"]\nCMD ["a", "b"]\n',
    "debian": (  # a real distribution, shell work without apt
        "FROM debian:bookworm\n"
        "RUN useradd -m -s /bin/bash bob && mkdir -p /opt/app && echo hi > /opt/app/x && ln -s x /opt/app/l"
        " && chmod 700 /opt/app && rm -rf /usr/share/doc/dpkg\n"
        "USER bob\nWORKDIR /home/bob\nRUN echo $HOME > notes && id > id.txt\n"
    ),
    "dockerignore": "FROM scratch\nCOPY . /ctx/\nCOPY etc/* /only/\n",
    "multi-stage": (
        "FROM base:1 AS builder\n"
        "RUN echo built > /artifact\n"
        "FROM scratch\n"
        "COPY --from=builder /artifact /a\n"
        "COPY --from=builder /bin/sh /bin/sh\n"
    ),
}


# what a case's image is built FROM, itself built first by each tool
PARENTS = {
    "onbuild": (
        "FROM base:1\n"
        "ONBUILD COPY c1.txt /from-trigger.txt\n"
        "ONBUILD RUN echo triggered > /triggered\n"
        "HEALTHCHECK --interval=5s --retries=2 CMD echo ok\n"
        "LABEL parent=yes\n"
    )
}
CASES["onbuild"] = "FROM parent:1\nRUN echo child > /child\n"


def _tar_of(path: Path, gz: bool) -> None:
    with tarfile.open(path, "w:gz" if gz else "w") as t:
        for name, data in (("x/inner.txt", b"inner\n"), ("top.txt", b"top\n")):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o640, 1_600_000_000
            t.addfile(info, io.BytesIO(data))


def _context(root: Path) -> None:
    (root / "etc").mkdir()
    (root / "etc/app.conf").write_text("k=v\n")
    (root / "etc/sub").mkdir()
    (root / "etc/sub/x").write_text("x\n")
    os.chmod(root / "etc/sub/x", 0o640)
    os.symlink("app.conf", root / "etc/link")
    (root / "bin").mkdir()
    (root / "bin/tool").write_text("#!/bin/sh\n")
    for n in ("a b.txt", "c1.txt", "c2.txt", "a_b.txt"):
        (root / n).write_text(n)
    _tar_of(root / "layer.tar", gz=False)
    _tar_of(root / "layer.tar.gz", gz=True)


def _buildah(storage: Path, *args: str) -> str:
    cmd = ["buildah", "--root", str(storage / "root"), "--runroot", str(storage / "run"), "--storage-driver", "vfs"]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _unpacked(layout: Path, tag: str, dest: Path) -> tuple[str, dict, int]:
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:{tag}", str(dest)], check=True, capture_output=True, timeout=300
    )
    index = json.loads((layout / "index.json").read_text())
    desc = next(
        m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    )
    manifest = json.loads((layout / "blobs/sha256" / desc["digest"][7:]).read_text())
    config = json.loads((layout / "blobs/sha256" / manifest["config"]["digest"][7:]).read_text())
    return dump_tree(dest / "rootfs"), config, len(manifest["layers"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_build_matches_buildah(
    case: str, root: Path, tmp_path: Path, base_archive: Path, request: pytest.FixtureRequest
) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    _context(ctx)
    if case == "dockerignore":  # Docker's pattern rules: root-level globs, an exception, a directory
        # with an exception below it, ** at any depth, the last match winning
        (ctx / ".dockerignore").write_text("# comment\n*.txt\n!a b.txt\netc/sub\n!etc/sub/x\n**/link\nDockerfile\n")
    strata(root, "import", str(base_archive), "base:1")
    storage = tmp_path / "buildah"
    strata(root, "save", "-o", str(tmp_path / "base.tar"), "base:1")
    _buildah(storage, "pull", "-q", f"docker-archive:{tmp_path / 'base.tar'}")
    _buildah(storage, "tag", "base:1", "localhost/base:1")
    if case == "debian":  # (built by make-images.sh --debian, once a session; skipped without a mirror)
        layout = request.getfixturevalue("debian_layout") / "oci/debian"
        before = set(strata(root, "images", "-q", "--no-trunc").stdout.decode().split())
        strata(root, "load", "-i", str(layout))
        (loaded,) = set(strata(root, "images", "-q", "--no-trunc").stdout.decode().split()) - before
        strata(root, "tag", loaded, "debian:bookworm")
        image_id = _buildah(storage, "pull", "-q", f"oci:{layout}:bookworm").split()[-1]
        _buildah(storage, "tag", image_id, "localhost/debian:bookworm")
    for tag, text in [*([("parent:1", PARENTS[case])] if case in PARENTS else []), ("built:1", CASES[case])]:
        (ctx / "Dockerfile").write_text(text)
        out = strata(root, "build", "-t", tag, str(ctx)).stdout.decode()
        assert out.splitlines()[0].startswith("STEP 1/")
        bud = ["bud", "--isolation", "chroot", "--layers", "--format", "docker", "-q", "-t", tag, str(ctx)]
        _buildah(storage, *bud)
    strata(root, "save", "--format", "oci", "-o", str(tmp_path / "mine"), "built:1")
    mine = _unpacked(tmp_path / "mine", "1", tmp_path / "mine-unpacked")
    _buildah(storage, "push", "-q", "built:1", f"oci:{tmp_path / 'theirs'}:1")
    theirs = _unpacked(tmp_path / "theirs", "1", tmp_path / "theirs-unpacked")
    # buildah leaves in a RUN's layer the empty stubs it mounted over; BuildKit (Docker) removes
    # them, and strata makes none (it mounts where the image has the file or directory)
    stubs = {"d 0755 0:0 run", *(f"f 0755 0:0 size=0 nlink=1 sha256={EMPTY} etc/{n}" for n in BUILDAH_STUBS)}
    stubs -= set(mine[0].splitlines())  # (where the base has them, they are no stubs)
    theirs = ("\n".join(x for x in theirs[0].splitlines() if x not in stubs) + "\n", *theirs[1:])

    ours_only = sorted(set(mine[0].splitlines()) - set(theirs[0].splitlines()))
    theirs_only = sorted(set(theirs[0].splitlines()) - set(mine[0].splitlines()))
    assert (ours_only, theirs_only) == ([], []), "file trees differ (strata's lines, buildah's lines)"
    ours_cfg, their_cfg = mine[1].get("config") or {}, theirs[1].get("config") or {}
    their_cfg.get("Labels", {}).pop("io.buildah.version", None)
    # Docker's own fields, which an OCI config has not: from buildah's Docker-format config
    docker = json.loads(_buildah(storage, "inspect", "--type", "image", "built:1"))["Docker"]["config"]
    their_cfg.update({f: docker.get(f) for f in DOCKER_ONLY})
    ours_cfg.update(
        {
            f: json.loads(strata(root, "inspect", "--format", f"{{{{json .Config.{f}}}}}", "built:1").stdout)
            for f in DOCKER_ONLY
        }
    )
    for f in CONFIG_FIELDS + DOCKER_ONLY:
        assert (f, ours_cfg.get(f) or None) == (f, their_cfg.get(f) or None)
    assert mine[2] == theirs[2], "layer counts differ"


@pytest.mark.parametrize(
    ("dockerfile", "needle"),
    [
        ("FROM scratch\nFOO x\n", "Dockerfile:2: unknown instruction: FOO"),
        ("ENV A=1\n", "Dockerfile:1:"),
        ("FROM scratch\nCOPY ../etc /x\n", "Dockerfile:2: ../etc: forbidden path outside the build context"),
        ("FROM scratch\nCOPY missing /x\n", "Dockerfile:2: missing: no such file"),
        ("FROM base:1\nRUN exit 3\n", "Dockerfile:2: RUN /bin/sh -c exit 3: exit code 3"),
        ("FROM scratch\nRUN <<EOF\nnever ends\n", "Dockerfile:2: unterminated heredoc"),
        ('FROM scratch\nCMD ["a"\n', "Dockerfile:2: CMD: unterminated JSON array"),
        ("FROM b AS a\nENV X=1\nFROM a AS b\n", "Dockerfile:1: circular dependency"),
        ("FROM scratch AS a\nFROM a AS a2\nFROM a2 AS a2\n", "Dockerfile:3: circular dependency"),
        (
            "FROM scratch\nADD http://127.0.0.1:9/file /f\n",
            "Dockerfile:2: ADD http://127.0.0.1:9/file: cannot fetch it",
        ),
    ],
)
def test_bad_input_is_one_line_and_tags_nothing(
    dockerfile: str, needle: str, root: Path, tmp_path: Path, base_archive: Path
) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    _context(ctx)
    (ctx / "Dockerfile").write_text(dockerfile)
    strata(root, "import", str(base_archive), "base:1")
    before = snapshot(root)
    proc = strata(root, "build", "-t", "bad:1", str(ctx), check=False)
    err = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 1 and err[-1].startswith("Error: ") and needle in err[-1], err
    assert "Traceback" not in proc.stderr.decode()
    assert snapshot(root) == before  # (nothing tagged, no layer or blob of the failed steps kept)


def test_bad_target_and_context(root: Path, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch AS one\nENV A=1\n")
    for args, needle in (
        (["--target", "two", str(ctx)], "target stage 'two' could not be found"),
        ([str(ctx / "Dockerfile")], "is not a directory"),
    ):
        proc = strata(root, "build", *args, check=False)
        assert proc.returncode == 1 and needle in proc.stderr.decode(), proc.stderr


def test_a_rebuild_reuses_every_step_and_gives_the_same_image(root: Path, tmp_path: Path, base_archive: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    _context(ctx)
    (ctx / "Dockerfile").write_text(
        'FROM base:1\nENV A=1\nCOPY etc /etc/app/\nRUN echo $A > /a\nCOPY c1.txt /c\nRUN echo done > /d\nCMD ["sh"]\n'
    )
    strata(root, "import", str(base_archive), "base:1")
    first = strata(root, "build", "-q", "-t", "c:1", str(ctx)).stdout.decode().strip()
    again = strata(root, "build", "-t", "c:1", str(ctx)).stdout.decode()
    assert again.count("--> Using cache") == 4 and again.strip().endswith(first)  # (all 4 layer steps)
    os.utime(ctx / "c1.txt", (0, 0))  # (an mtime alone changes nothing, as in BuildKit)
    assert strata(root, "build", "-q", str(ctx)).stdout.decode().strip() == first
    (ctx / "c1.txt").write_text("changed")  # the COPY of it and the RUN after it run again
    changed = strata(root, "build", "-t", "c:2", str(ctx)).stdout.decode()
    assert changed.count("--> Using cache") == 2 and not changed.strip().endswith(first)
    fresh = strata(root, "build", "--no-cache", "-t", "c:3", str(ctx)).stdout.decode()
    assert "Using cache" not in fresh
    assert "is consistent" in strata(root, "system", "check").stdout.decode()


@pytest.mark.parametrize("isolation", ["oci", "chroot"])
def test_heredocs_run_as_buildkit_runs_them(root: Path, tmp_path: Path, base_archive: Path, isolation: str) -> None:
    """(buildah 1.28, Debian 12's, reads no heredocs: the expected files are written out here.)"""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM base:1\n"
        "RUN <<EOF\necho one > /h1\necho two >> /h1\nEOF\n"  # alone: the here-document is the script
        "RUN <<A sh && <<B sh\necho a > /h2\nA\necho b > /h3\nB\n"  # several, each a command's stdin
        "COPY <<'EOF' /h4\nfour $X\nEOF\n"  # quoted: as written
        "ENV X=ex\nCOPY <<EOF /h5\n'$X' \"${X}\" \\$X \\n\nEOF\n"  # unquoted: expanded as a shell would
        'RUN <<EOF\n#!/bin/sh  -e \necho "$-" > /h6\nEOF\n'  # a `#!` line: run by that interpreter, with its argument
    )
    strata(root, "import", str(base_archive), "base:1")
    strata(root, "build", "--isolation", isolation, "-t", "h:1", str(ctx))
    strata(root, "create", "--name", "h", "h:1")
    out = tmp_path / "h.tar"
    strata(root, "export", "-o", str(out), "h")
    with tarfile.open(out) as t:
        files = {
            m.name.lstrip("./"): t.extractfile(m).read()
            for m in t.getmembers()
            if m.name.lstrip("./") in ("h1", "h2", "h3", "h4", "h5", "h6")
        }  # type: ignore[union-attr]
    assert files == {
        "h1": b"one\ntwo\n",
        "h2": b"a\n",
        "h3": b"b\n",
        "h4": b"four $X\n",
        "h5": b"'ex' \"ex\" $X \\n\n",
        "h6": b"e\n",
    }


def test_source_date_epoch_makes_builds_reproducible(root: Path, tmp_path: Path, base_archive: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    _context(ctx)
    (ctx / "Dockerfile").write_text("FROM base:1\nCOPY etc /srv/etc\nRUN echo made > /srv/made\nENV A=1\n")
    strata(root, "import", str(base_archive), "base:1")
    exe = str(REPO / ".venv" / "bin" / "strata")

    def build(epoch: str | None) -> str:
        env = {**os.environ, **({"SOURCE_DATE_EPOCH": epoch} if epoch else {})}
        cmd = [exe, "--root", str(root), "build", "--no-cache", "-q", str(ctx)]
        return subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300).stdout.decode().strip()

    first = build("1700000000")
    time.sleep(1.1)  # (a second later: any time or mtime not clamped would differ)
    assert build("1700000000") == first
    assert build(None) != first
    created = json.loads(strata(root, "inspect", first).stdout)[0]["Created"]
    assert created.startswith("2023-11-14T22:13:20")


def test_build_args_and_the_predefined_proxy_args(root: Path, tmp_path: Path, base_archive: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text('FROM base:1\nARG V=default\nRUN echo "$V $HTTP_PROXY $UNDECLARED" > /seen\n')
    strata(root, "import", str(base_archive), "base:1")
    args = ["--build-arg", "V=given", "--build-arg", "HTTP_PROXY=http://proxy:3128", "--build-arg", "UNDECLARED=x"]
    strata(root, "build", "-t", "p:1", *args, str(ctx))
    out = strata(root, "run", "--rm", "p:1", "sh", "-c", "read l < /seen; echo $l").stdout.decode()
    assert out == "given http://proxy:3128\n"  # (an argument no ARG declares stays out, a proxy one comes in)
    history = strata(root, "history", "--no-trunc", "--format", "{{.CreatedBy}}", "p:1").stdout.decode()
    assert "V=given" in history and "proxy" not in history  # (as Docker: proxies never in the history)
