"""`strata build`: a Dockerfile's stages over the store's layers; each step that changes files
becomes a layer (through the commit path), every other one a history row marked empty_layer."""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from .. import reference
from ..blobs import tmp_prefix
from ..commit import ChangedPath, commit_layer
from ..errors import InvalidInput, NotFound
from ..images import ImageRecord, LayerRef
from ..layers import chain_ids
from ..registry import platform
from ..store import Store, now_rfc3339
from . import cache, isolation, meta, runtime
from .cache import BuildCache
from .console import Stdio
from .copying import URL_PREFIXES, copy_in, source_paths
from .dockerfile import Dockerfile, DockerfileError, Instruction, parse
from .ignore import Ignore
from .words import expand, split

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Host(Protocol):
    """What a build needs beyond the store, handed in by the CLI (the store knows no filesystem)."""

    def mounted(self, lowers: list[Path], upper: Path | None, work: Path | None) -> AbstractContextManager[Path]:
        """The union of *lowers* (topmost first) under *upper*, mounted for the time of the block."""
        ...

    def changes(self, lowers: list[Path], upper: Path, work: Path) -> list[ChangedPath]:
        """What *upper* changes over *lowers*."""
        ...

    def keep_xattr(self, name: str) -> bool:
        """Whether a layer keeps xattr *name* (not the union filesystem's own)."""
        ...

    def pull(self, name: str) -> None:
        """Bring image *name* into the store from its registry."""
        ...


@dataclass
class Options:
    tags: list[str] = field(default_factory=list)
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    no_cache: bool = False
    isolation: str | None = None  # "oci" (runc) or "chroot"; None: oci where runc is installed
    source_date_epoch: int | None = None  # every time in the image, and no file's mtime, later than it
    compression: str = "gzip"


@dataclass
class _Image:
    """A stage's image as its steps build it: the whole config and the layers so far."""

    config: dict
    layers: list[LayerRef]
    key: str  # the build cache's key of this state

    def chain(self) -> str | None:
        return chain_ids([x.diff_id for x in self.layers])[-1] if self.layers else None


def build(
    store: Store, context: Path, dockerfile: Path, host: Host, opts: Options, say: Callable[[str], None]
) -> ImageRecord:
    """Build *dockerfile* over *context*; tag and return the image of the target (or last) stage."""
    if not context.is_dir():
        raise InvalidInput(f"build context {context} is not a directory")
    try:
        text = dockerfile.read_text()
    except OSError as e:
        raise InvalidInput(f"cannot read {dockerfile}: {e.strerror}") from None
    df = parse(text, str(dockerfile))
    return _Build(store, context, df, str(dockerfile), host, opts, say).run()


class _Build:
    def __init__(
        self, store: Store, context: Path, df: Dockerfile, name: str, host: Host, opts: Options, say: Callable
    ) -> None:
        self.store, self.context, self.df, self.name, self.host, self.opts, self.say = (
            store,
            context,
            df,
            name,
            host,
            opts,
            say,
        )
        self.stages: dict[str, _Image] = {}  # by name (lower case) and by index
        self.global_args: dict[str, str] = {}
        self.steps = len(df.instructions)
        self.ignore = Ignore.of_context(context)
        self.cache = BuildCache(store)
        self.step = 0

    def _fail(self, ins: Instruction, message: str) -> DockerfileError:
        return DockerfileError(self.name, ins.line, message)

    def run(self) -> ImageRecord:
        groups: list[list[Instruction]] = []
        for ins in self.df.instructions:
            if ins.cmd == "FROM":
                groups.append([ins])
            elif groups:
                groups[-1].append(ins)
            else:  # ARGs before the first FROM: what FROM lines may use
                self._announce(ins)
                self.global_args.update(self._arg(ins, self.global_args, {}))
        names = [self._stage_name(g[0]) for g in groups]
        last = len(groups) - 1
        if self.opts.target is not None:
            wanted = self.opts.target.lower()
            if wanted not in names:
                raise InvalidInput(f"target stage {self.opts.target!r} could not be found in {self.name}")
            last = names.index(wanted)
        built: list[_Image] = []
        for i, group in enumerate(groups[: last + 1]):
            base = split(group[0].args, self.global_args, self.df.escape)[0].lower()
            if base in names[i:]:  # (a stage can only build on one before it)
                raise self._fail(
                    group[0], f"circular dependency: stage {names[i] or i} builds FROM {base}, not built yet"
                )
            result = self._stage(group)
            self.stages[str(i)] = result
            if names[i]:
                self.stages[names[i]] = result
            built.append(result)
        # once all succeeded: the stages before the last are kept as untagged images (as Docker's
        # builder kept them), so that their layers are referenced, and `image prune` removes them
        for i, result in enumerate(built):
            tags = [reference.parse(t) for t in self.opts.tags] if i == last else []
            record = self.store.add_image(
                json.dumps(result.config, separators=(",", ":")).encode(), result.layers, tags=tags
            )
        return record

    def _announce(self, ins: Instruction) -> None:
        self.step += 1
        self.say(f"STEP {self.step}/{self.steps}: {ins.original}")

    def _stage_name(self, ins: Instruction) -> str:
        words = split(ins.args, self.global_args, self.df.escape)
        if len(words) == 3 and words[1].lower() == "as":
            return words[2].lower()
        if len(words) != 1:
            raise self._fail(ins, f"FROM expects IMAGE [AS NAME], not {ins.args!r}")
        return ""

    # -- a stage ------------------------------------------------------------------------------
    def _stage(self, group: list[Instruction]) -> _Image:
        head = group[0]
        self._announce(head)
        base = split(head.args, self.global_args, self.df.escape)[0]
        image = self._base(head, base)
        stage = meta.Stage(config=image.config.setdefault("config", {}))
        stage.shell = list(stage.config.get("Shell") or meta.DEFAULT_SHELL)
        env = stage.config.setdefault("Env", [])
        if not any(e.startswith("PATH=") for e in env):  # (as BuildKit gives every image one)
            env.insert(0, "PATH=" + DEFAULT_PATH)
        triggers = [parse(f"FROM scratch\n{t}").instructions[1] for t in stage.config.pop("OnBuild", None) or []]
        for ins in [*triggers, *group[1:]]:
            if ins in group:
                self._announce(ins)
            try:
                self._instruction(ins, image, stage)
            except DockerfileError:
                raise
            except InvalidInput as e:
                raise self._fail(ins, str(e)) from None
        if stage.author:
            image.config["author"] = stage.author
        return image

    def _base(self, ins: Instruction, name: str) -> _Image:
        if name.lower() in self.stages:
            return copy.deepcopy(self.stages[name.lower()])
        if name == "scratch":
            return _Image(_scratch_config(), [], cache.key("scratch"))
        try:
            record = self.store.resolve(name)
        except NotFound:
            self.host.pull(name)
            record = self.store.resolve(name)
        config = json.loads(self.store.blobs.read(record.id))
        return _Image(config, list(record.layers), cache.key("image", record.id))

    def _instruction(self, ins: Instruction, image: _Image, stage: meta.Stage) -> None:
        if ins.cmd == "ARG":  # (no row of its own: what it sets is in the keys of the steps after it)
            stage.args.update(self._arg(ins, stage.args, self.global_args))
            return
        inputs = self._inputs(ins, stage)
        k = cache.key(
            image.key, ins.original, stage.env(), stage.config, stage.shell, inputs, self.opts.source_date_epoch
        )
        hit = None if self.opts.no_cache else self.cache.get(k, image.chain())
        if ins.cmd in meta.META:
            self._history(image, meta.apply(ins, stage, self.df.escape), empty=True, row=hit[0] if hit else None)
        elif hit is not None:
            self.say("--> Using cache")
            row, layer = hit
            assert layer is not None
            self._add_layer(image, layer, row)
        elif ins.cmd == "RUN":
            self._run(ins, image, stage)
        elif ins.cmd in ("COPY", "ADD"):
            self._copy(ins, image, stage)
        else:
            raise self._fail(ins, f"{ins.cmd} is not allowed here")
        if hit is None:
            row = image.config["history"][-1]
            self.cache.put(k, row, image.layers[-1] if not row.get("empty_layer") else None)
        image.key = k

    def _inputs(self, ins: Instruction, stage: meta.Stage) -> object:
        """What a COPY or ADD copies, for its cache key: the content (or the other stage's key)."""
        if ins.cmd not in ("COPY", "ADD"):
            return None
        docs = [d.content for d in ins.heredocs]
        src = ins.flags.get("from")
        if src:
            other = self.stages.get(src.lower())
            return [other.key if other else cache.key("image", src), docs]
        words = split(ins.args, stage.env(), self.df.escape) if ins.exec_form is None else ins.exec_form
        if ins.cmd == "ADD" and any(w.startswith(URL_PREFIXES) for w in words):
            return os.urandom(16).hex()  # (what a URL holds is not known before it is fetched)
        return [cache.tree_digest(self.context, source_paths(self.context, words[:-1], self.ignore), self.ignore), docs]

    def _arg(self, ins: Instruction, scope: dict[str, str], outer: dict[str, str]) -> dict[str, str]:
        out = {}
        for word in split(ins.args, scope, self.df.escape):
            key, eq, default = word.partition("=")
            if key in self.opts.build_args:
                out[key] = self.opts.build_args[key]
            elif eq:
                out[key] = default
            elif key in outer:
                out[key] = outer[key]
        return out

    def _now(self) -> str:
        epoch = self.opts.source_date_epoch
        if epoch is None:
            return now_rfc3339()
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _history(self, image: _Image, created_by: str, empty: bool, row: dict | None = None) -> None:
        if row is None:
            row = {"created": self._now(), "created_by": created_by, "comment": "buildkit.dockerfile.v0"}
            if empty:
                row["empty_layer"] = True
        image.config.setdefault("history", []).append(row)
        image.config["created"] = row["created"]

    # -- steps that change files ----------------------------------------------------------------
    def _lowers(self, image: _Image) -> list[Path]:
        return [self.store.layers.path(c) for c in reversed(chain_ids([x.diff_id for x in image.layers]))]

    @contextmanager
    def _container(self, image: _Image) -> Iterator[tuple[Path, Path, Path]]:
        """A scratch container layer over *image* (in tmp/: a killed build leaves it to be swept)."""
        root = Path(tempfile.mkdtemp(dir=self.store.blobs.tmp, prefix=tmp_prefix("build")))
        try:
            for d in ("upper", "work", "empty"):
                (root / d).mkdir()
                (root / d).chmod(0o755)
            yield root / "upper", root / "work", root
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def _layer_step(self, image: _Image, created_by: str, change: Callable[[Path], None]) -> None:
        with self._container(image) as (upper, work, root):
            lowers = self._lowers(image) or [root / "empty"]  # (scratch: a stack needs a lower)
            with self.host.mounted(lowers, upper, work) as rootfs:
                change(rootfs)
            changes = self.host.changes(lowers, upper, work)
            epoch = self.opts.source_date_epoch
            ref = commit_layer(self.store, image.chain(), changes, self.host.keep_xattr, self.opts.compression, epoch)
        self._add_layer(image, ref, None, created_by)

    def _add_layer(self, image: _Image, ref: LayerRef, row: dict | None, created_by: str = "") -> None:
        image.layers.append(ref)
        image.config.setdefault("rootfs", {"type": "layers", "diff_ids": []})["diff_ids"].append(ref.diff_id)
        self._history(image, created_by, empty=False, row=row)

    def _run(self, ins: Instruction, image: _Image, stage: meta.Stage) -> None:
        argv = meta.command(ins, stage)
        env = stage.env()
        # the proxy variables any build may pass without an ARG; kept out of the history, as Docker does
        env.update({k: v for k, v in self.opts.build_args.items() if k in meta.PREDEFINED_ARGS and k not in env})
        workdir = stage.config.get("WorkingDir") or "/"
        user = stage.config.get("User") or "root"
        used = " ".join(f"{k}={v}" for k, v in stage.args.items())
        shown = " ".join(argv) if ins.exec_form is None else json.dumps(argv)
        args = f"|{len(stage.args)} {used} " if stage.args else ""  # (the build args RUN sees, as BuildKit)
        created_by = f"RUN {args}{shown} # buildkit"

        def change(rootfs: Path) -> None:
            (rootfs / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
            stdio = Stdio(script=meta.script(ins))  # (and /dev/null for stdin, as Docker's RUN)
            code = isolation.run(rootfs, argv, env, workdir, user, runtime_tmp=self._runtime_tmp(), stdio=stdio)
            if code != 0:
                raise self._fail(ins, f"RUN {shown}: exit code {code}")

        self._layer_step(image, created_by, change)

    def _runtime_tmp(self) -> Path | None:
        """Where the OCI runtime's bundles go, or None for chroot isolation."""
        return self.store.blobs.tmp if use_runtime(self.opts.isolation) else None

    def _copy(self, ins: Instruction, image: _Image, stage: meta.Stage) -> None:
        env = stage.env()
        words = ins.exec_form if ins.exec_form is not None else split(ins.args, env, self.df.escape)
        words = [expand(w, env, self.df.escape) for w in words] if ins.exec_form is not None else words
        if len(words) < 2 and not ins.heredocs:
            raise self._fail(ins, f"{ins.cmd} requires at least two arguments: SOURCE… DEST")
        *sources, dest = words
        src_from = ins.flags.get("from")
        workdir = stage.config.get("WorkingDir") or "/"
        created_by = f"{ins.cmd} {ins.args} # buildkit"

        def change(rootfs: Path) -> None:
            if src_from:
                with self._source_of(ins, src_from) as src_root:
                    copy_in(ins, src_root, sources, rootfs, dest, workdir, False, env=env)
            else:
                copy_in(ins, self.context, sources, rootfs, dest, workdir, True, self.ignore, env)

        self._layer_step(image, created_by, change)

    @contextmanager
    def _source_of(self, ins: Instruction, name: str) -> Iterator[Path]:
        """The filesystem of stage or image *name*, read-only."""
        image = self.stages.get(name.lower()) or self._base(ins, name)
        with self._container(image) as (_upper, _work, scratch):
            with self.host.mounted(self._lowers(image) or [scratch / "empty"], None, None) as root:
                yield root


def use_runtime(isolation_name: str | None) -> bool:
    """Whether to run through the OCI runtime: asked for, or by default where it is installed."""
    if isolation_name not in (None, "oci", "chroot"):
        raise InvalidInput(f"unknown isolation {isolation_name!r} (use oci or chroot)")
    if isolation_name == "oci" and not runtime.available():
        raise InvalidInput("--isolation oci needs runc, which is not installed (or use --isolation chroot)")
    return isolation_name == "oci" or (isolation_name is None and runtime.available())


def _scratch_config() -> dict:
    p = platform.host()  # (what the image says it runs on)
    return {"architecture": p.architecture, "os": p.os, "config": {}, "rootfs": {"type": "layers", "diff_ids": []}}
