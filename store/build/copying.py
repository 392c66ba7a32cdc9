"""COPY and ADD: files from the build context (or another stage) into a mounted rootfs, with
Docker's rules for sources, destinations, owners and modes."""

from __future__ import annotations

import glob
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

from ..errors import InvalidInput
from . import isolation
from .dockerfile import Instruction
from .words import expand_heredoc

URL_PREFIXES = ("http://", "https://")


def copy_in(
    ins: Instruction,
    src_root: Path,
    sources: list[str],
    rootfs: Path,
    dest: str,
    workdir: str,
    from_context: bool,
    ignored: Callable[[str], bool] = lambda _rel: False,
    env: Mapping[str, str] | None = None,
) -> None:
    """Copy *sources* (relative to *src_root*; globs allowed; *ignored* paths left out, as if they
    were not there) to *dest* in *rootfs*."""
    names = {d.name for d in ins.heredocs}
    sources = [x for x in sources if not (x.startswith("<<") and x[2:].lstrip("-").strip("'\"") in names)]
    owner = _owner(ins, rootfs)
    mode = _mode(ins)
    target = dest if dest.startswith("/") else workdir.rstrip("/") + "/" + dest
    into_dir = dest.endswith("/") or len(sources) + len(ins.heredocs) > 1 or dest in (".", "..")
    for doc in ins.heredocs:  # (COPY <<EOF /path: the here-document is the file)
        out = _inside(rootfs, target + ("/" + doc.name if into_dir else ""))
        _parents(out.parent, rootfs, owner)
        out.write_text(expand_heredoc(doc.content, env or {}) if doc.expand else doc.content)
        os.chown(out, *(owner or (0, 0)))
        os.chmod(out, mode if mode is not None else 0o644)
    for src in sources:
        if ins.cmd == "ADD" and src.startswith(URL_PREFIXES):
            _add_url(src, rootfs, target, into_dir, owner)
            continue
        matches = _expand(src_root, src, from_context, ignored)
        if len(matches) > 1:
            into_dir = True
        for m, name in matches:
            dst = _inside(rootfs, target)
            if m.is_dir():
                _copy_tree(m, dst, rootfs, owner, mode, from_context, _rel(src_root, m), ignored)
            elif ins.cmd == "ADD" and from_context and tarfile.is_tarfile(m):
                _parents(dst, rootfs, owner)
                _extract(m, dst)
            else:
                if into_dir or dst.is_dir():
                    dst = dst / name
                _parents(dst.parent, rootfs, owner)
                _copy_one(m, dst, owner, mode, from_context)


def _inside(rootfs: Path, path: str) -> Path:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    out: list[str] = []
    for p in parts:
        if p == "..":
            if out:
                out.pop()
        else:
            out.append(p)
    return rootfs.joinpath(*out)


def source_paths(root: Path, sources: list[str], ignored: Callable[[str], bool]) -> list[str]:
    """The paths below *root* that *sources* name (globs expanded), for the build cache."""
    out = []
    for src in sources:
        if src.startswith(("<<",) + URL_PREFIXES):
            continue
        try:
            out += [_rel(root.resolve(), p) for p, _name in _expand(root, src, True, ignored)]
        except InvalidInput:
            continue  # (reported by the copy itself)
    return out


def _rel(root: Path, p: Path) -> str:
    return str(p.relative_to(root)) if p != root else ""


def _expand(root: Path, src: str, from_context: bool, ignored: Callable[[str], bool]) -> list[tuple[Path, str]]:
    """The files *src* names below *root*, with the names they are copied as: a path, or a glob
    (Go's filepath.Match patterns); a symlink named is followed, within *root* (its absolute
    targets are *root*'s, as BuildKit's), and keeps its own name."""
    rel = os.path.normpath(src.lstrip("/"))
    if rel == ".." or rel.startswith("../"):
        raise InvalidInput(f"{src}: forbidden path outside the build context")
    if any(c in rel for c in "*?["):
        found = sorted(glob.glob(rel, root_dir=root))
    else:
        found = [rel] if os.path.lexists(root / rel) else []
    keep_dirs = getattr(ignored, "has_exceptions", False)  # (an exception may bring files back below)
    found = [f for f in found if f == "." or not ignored(f) or (keep_dirs and (root / f).is_dir())]
    out = [isolation.resolve_in(root, f) for f in found]
    if not out or any(p is None for p in out):
        where = "the build context" if from_context else "the stage"
        raise InvalidInput(f"{src}: no such file or directory in {where}")
    return [(p, os.path.basename(f)) for p, f in zip(out, found, strict=True)]  # type: ignore[misc]


def _owner(ins: Instruction, rootfs: Path) -> tuple[int, int] | None:
    spec = ins.flags.get("chown")
    if not spec:
        return None
    uid, gid, _ = isolation.user_ids(rootfs, spec)
    if ":" not in spec:
        gid = uid  # (a user without a group: the same number for both, as Docker's reference says)
    return uid, gid


def _mode(ins: Instruction) -> int | None:
    spec = ins.flags.get("chmod")
    if spec is None:
        return None
    try:
        return int(spec, 8)
    except ValueError:
        raise InvalidInput(f"--chmod={spec}: expected an octal mode such as 755") from None


def _parents(path: Path, rootfs: Path, owner: tuple[int, int] | None = None) -> None:
    """Make directory *path* and its missing parents, 0755, owned as the files copied (as BuildKit)."""
    missing = []
    p = path
    while not p.exists() and p != rootfs:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir()
        os.chmod(d, 0o755)
        if owner is not None:
            os.chown(d, *owner)


def _copy_one(src: Path, dst: Path, owner: tuple[int, int] | None, mode: int | None, from_context: bool) -> None:
    st = src.lstat()
    if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
        dst.unlink()
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    else:
        shutil.copyfile(src, dst)
    uid, gid = owner or ((0, 0) if from_context else (st.st_uid, st.st_gid))
    os.chown(dst, uid, gid, follow_symlinks=False)
    if not src.is_symlink():
        os.chmod(dst, mode if mode is not None else st.st_mode & 0o7777)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_tree(
    src: Path,
    dst: Path,
    rootfs: Path,
    owner: tuple[int, int] | None,
    mode: int | None,
    from_context: bool,
    rel: str,
    ignored: Callable[[str], bool],
) -> None:
    """A source directory: its contents (not itself) into *dst*; *rel* is its path in its root."""
    _parents(dst, rootfs, owner)
    for entry in sorted(src.iterdir()):
        sub = f"{rel}/{entry.name}" if rel else entry.name
        is_dir = entry.is_dir() and not entry.is_symlink()
        if ignored(sub) and not (is_dir and getattr(ignored, "has_exceptions", False)):
            continue  # (an ignored directory is still searched where an exception may bring files back)
        target = dst / entry.name
        if is_dir:
            if not target.is_dir():
                target.mkdir()
            _copy_tree(entry, target, rootfs, owner, mode, from_context, sub, ignored)
            st = entry.lstat()
            uid, gid = owner or ((0, 0) if from_context else (st.st_uid, st.st_gid))
            os.chown(target, uid, gid)
            os.chmod(target, mode if mode is not None else st.st_mode & 0o7777)
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        else:
            _copy_one(entry, target, owner, mode, from_context)


def _extract(archive: Path, dst: Path) -> None:
    """ADD of a local tar (plain, gzip, bzip2 or xz): its contents, extracted into *dst*."""
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            name = os.path.normpath(m.name.lstrip("/"))
            if name.startswith(".."):
                raise InvalidInput(f"{archive.name}: entry {m.name!r} points outside the destination")
            if m.islnk():
                m.linkname = os.path.normpath(m.linkname.lstrip("/"))
        tar.extractall(dst, numeric_owner=True)  # noqa: S202 (names checked above)


def _add_url(url: str, rootfs: Path, target: str, into_dir: bool, owner: tuple[int, int] | None) -> None:
    name = url.rstrip("/").rsplit("/", 1)[-1] or "index.html"
    dst = _inside(rootfs, target + ("/" + name if into_dir or target.endswith("/") else ""))
    _parents(dst.parent, rootfs, owner)
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(dst, "wb") as out:  # noqa: S310
            shutil.copyfileobj(r, out)
    except (urllib.error.URLError, OSError, ValueError) as e:
        dst.unlink(missing_ok=True)
        raise InvalidInput(f"ADD {url}: cannot fetch it ({getattr(e, 'reason', e)})") from None
    os.chown(dst, *(owner or (0, 0)))
    os.chmod(dst, 0o600)
