"""Test helpers that are independent of the code under test: tree dumps, tar extraction, the CLI."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STRATA_SHARED", REPO.parent / "shared"))


def _type(mode: int) -> str:
    for test, letter in (
        (stat.S_ISDIR, "d"),
        (stat.S_ISREG, "f"),
        (stat.S_ISLNK, "l"),
        (stat.S_ISFIFO, "p"),
        (stat.S_ISCHR, "c"),
        (stat.S_ISBLK, "b"),
        (stat.S_ISSOCK, "s"),
    ):
        if test(mode):
            return letter
    return "?"


def dump_tree(root: Path, with_xattrs: bool = True) -> str:
    """The same listing as make-images.sh's `dump_tree` (find -printf + getfattr), in Python."""
    entries = []
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            entries.append(os.path.relpath(os.path.join(dirpath, name), root))
    lines = [_line(root, "/")]
    for rel in sorted(entries, key=lambda p: p.encode()):
        lines.append(_line(root, rel))
    if with_xattrs:
        for rel in ["."] + sorted(entries, key=lambda p: p.encode()):
            path = root / rel
            names = sorted(os.listxattr(path, follow_symlinks=False))
            if names:
                lines.append(f"xattr {rel}")
                for n in names:
                    lines.append(f'  {n}="{os.getxattr(path, n, follow_symlinks=False).decode()}"')
    return "\n".join(lines) + "\n"


def _line(root: Path, rel: str) -> str:
    path = root if rel == "/" else root / rel
    st = os.lstat(path)
    kind = _type(st.st_mode)
    mode = "0" + format(stat.S_IMODE(st.st_mode), "o")
    owner = f"{st.st_uid}:{st.st_gid}"
    if kind == "f":
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return f"f {mode} {owner} size={st.st_size} nlink={st.st_nlink} sha256={digest} {rel}"
    if kind == "l":
        return f"l {mode} {owner} {rel} -> {os.readlink(path)}"
    return f"{kind} {mode} {owner} {rel}"


def gnu_untar(blob: Path, dest: Path) -> None:
    """Extract a (compressed) layer blob with GNU tar, keeping owners, modes and xattrs."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "tar",
            "--same-owner",
            "-p",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-xaf",
            str(blob),
            "-C",
            str(dest),
        ],
        check=True,
    )


def apply_oci_layers(layers: list[Path], dest: Path) -> None:
    """Apply extracted layer directories (bottom first) to `dest` with the OCI whiteout rules."""
    dest.mkdir(parents=True, exist_ok=True)
    for layer in layers:
        linked: dict[tuple[int, int], Path] = {}  # hard links inside a layer stay hard links
        for dirpath, dirs, files in os.walk(layer):
            rel = os.path.relpath(dirpath, layer)
            target_dir = dest / rel
            if ".wh..wh..opq" in files:
                for child in list(target_dir.iterdir()) if target_dir.is_dir() else []:
                    _remove(child)
            for name in files + dirs:
                if name.startswith(".wh."):
                    if name != ".wh..wh..opq":
                        _remove(target_dir / name[4:])
            for name in sorted(dirs):
                src, dst = Path(dirpath) / name, target_dir / name
                if dst.exists() and not dst.is_dir() or dst.is_symlink():
                    _remove(dst)
                if not dst.exists():
                    dst.mkdir()
                shutil.copystat(src, dst, follow_symlinks=False)
                st = os.lstat(src)
                os.chown(dst, st.st_uid, st.st_gid)
                os.chmod(dst, stat.S_IMODE(st.st_mode))
            for name in sorted(files):
                if name.startswith(".wh."):
                    continue
                src, dst = Path(dirpath) / name, target_dir / name
                if dst.exists() or dst.is_symlink():
                    _remove(dst)
                st = os.lstat(src)
                if (st.st_dev, st.st_ino) in linked:
                    os.link(linked[(st.st_dev, st.st_ino)], dst)
                    continue
                subprocess.run(["cp", "-a", "--no-dereference", str(src), str(dst)], check=True)
                linked[(st.st_dev, st.st_ino)] = dst
        _fix_dir_meta(layer, dest)


def _fix_dir_meta(layer: Path, dest: Path) -> None:
    for dirpath, _dirs, _files in os.walk(layer):
        rel = os.path.relpath(dirpath, layer)
        st = os.lstat(dirpath)
        os.utime(dest / rel, ns=(st.st_atime_ns, st.st_mtime_ns))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def strata(root: Path, *args: str, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the strata CLI as a user would, with its own store."""
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "strata"), "--root", str(root), *args],
        input=input,
        capture_output=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"strata {' '.join(args)} failed ({proc.returncode}): {proc.stderr.decode()}")
    return proc


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path in a store with its size and mtime, to show an operation left the store as it was."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if rel in ("lock", "gc.lock") or rel.startswith("tmp"):  # (lock files)
                continue
            st = os.lstat(p)
            out[rel] = (st.st_size, st.st_mtime_ns if not stat.S_ISDIR(st.st_mode) else 0)
    return out
