"""The instructions that change only an image's config (ENV, LABEL, WORKDIR, CMD, …), applied as
Docker applies them, each with the history row BuildKit writes for it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInput
from .console import SCRIPT_FD
from .dockerfile import Instruction
from .words import expand, split

DEFAULT_SHELL = ["/bin/sh", "-c"]
# what every build may set with --build-arg without declaring it (Docker's predefined ARGs)
PREDEFINED_ARGS = {
    v for k in ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY") for v in (k, k.lower())
}
META = {
    "ENV",
    "LABEL",
    "WORKDIR",
    "USER",
    "CMD",
    "ENTRYPOINT",
    "EXPOSE",
    "VOLUME",
    "SHELL",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "ONBUILD",
    "MAINTAINER",
    "ARG",
}


@dataclass
class Stage:
    """A stage's image as its instructions build it."""

    config: dict[str, Any]  # the image config's "config"
    author: str | None = None
    args: dict[str, str] = field(default_factory=dict)  # the ARGs in scope, with their values
    shell: list[str] = field(default_factory=lambda: list(DEFAULT_SHELL))

    def env(self) -> dict[str, str]:
        """The variables an instruction's words expand from: ARGs, overridden by ENV."""
        out = dict(self.args)
        for e in self.config.get("Env") or []:
            k, _, v = e.partition("=")
            out[k] = v
        return out


def pairs(ins: Instruction, env: dict[str, str], escape: str) -> list[tuple[str, str]]:
    """`K=V K2="v 2"` pairs (expanded), or the legacy one-pair `K V` form."""
    words = split(ins.args, env, escape)
    if not words:
        raise InvalidInput(f"{ins.cmd} requires at least one argument")
    if "=" not in words[0]:
        if ins.cmd == "LABEL" or len(words) < 2:
            raise InvalidInput(f"{ins.cmd} {ins.args!r}: expected KEY=VALUE")
        return [(words[0], expand(ins.args.split(None, 1)[1], env, escape))]
    out = []
    for w in words:
        k, eq, v = w.partition("=")
        if not eq or not k:
            raise InvalidInput(f"{ins.cmd}: {w!r} is not KEY=VALUE")
        out.append((k, v))
    return out


def command(ins: Instruction, stage: Stage) -> list[str]:
    """CMD/ENTRYPOINT/RUN argv: the exec form as given, the shell form through the stage's SHELL.
    A lone here-document that starts with ``#!`` runs by its interpreter, reading it from SCRIPT_FD."""
    if ins.exec_form is not None:
        return list(ins.exec_form)
    if ins.heredocs:
        content = _lone_heredoc(ins)
        if content is not None:
            if not content.startswith("#!"):
                return [*stage.shell, content]  # (`RUN <<EOF` alone: the here-document is the script, as BuildKit)
            # as the kernel reads a `#!` line: the interpreter, then the rest of the line as one argument
            line = content[2:].split("\n", 1)[0].strip(" \t")
            interpreter = re.split("[ \t]", line, maxsplit=1)[0]
            arg = line[len(interpreter) :].strip(" \t")
            return [interpreter, *([arg] if arg else []), f"/dev/fd/{SCRIPT_FD}"]  # (BuildKit mounts it at /dev/pipes/)
        # otherwise the shell reads the here-documents after the command line, as a script would
        return [*stage.shell, ins.args + "\n" + "".join(f"{d.content}{d.name}\n" for d in ins.heredocs)]
    return [*stage.shell, ins.args]


def script(ins: Instruction) -> str | None:
    """The here-document that its `#!` interpreter reads from SCRIPT_FD, or None."""
    content = _lone_heredoc(ins) if ins.exec_form is None else None
    return content if content is not None and content.startswith("#!") else None


def _lone_heredoc(ins: Instruction) -> str | None:
    """The here-document that is the whole of a RUN (`RUN <<EOF` and nothing else), or None."""
    if len(ins.heredocs) != 1:
        return None
    doc = ins.heredocs[0]
    alone = ins.args.strip() in (f"<<{doc.name}", f"<<-{doc.name}", f"<<'{doc.name}'", f'<<"{doc.name}"')
    return doc.content if alone else None


def apply(ins: Instruction, stage: Stage, escape: str) -> str:
    """Apply the metadata instruction *ins* to *stage*; return its history row's ``created_by``."""
    c, cfg = ins.cmd, stage.config
    env = stage.env()
    if c == "ENV":
        kept = dict(e.partition("=")[::2] for e in cfg.get("Env") or [])
        for k, v in pairs(ins, env, escape):
            kept[k] = v
            env[k] = v  # (a later pair of the same line sees the earlier ones, as in Docker)
        cfg["Env"] = [f"{k}={v}" for k, v in kept.items()]
        return f"ENV {ins.args}"
    if c == "LABEL":
        cfg["Labels"] = {**(cfg.get("Labels") or {}), **dict(pairs(ins, env, escape))}
        return f"LABEL {ins.args}"
    if c == "WORKDIR":
        path = expand(ins.args, env, escape)
        if not path:
            raise InvalidInput("WORKDIR requires a path")
        base = cfg.get("WorkingDir") or "/"
        cfg["WorkingDir"] = _normpath(path if path.startswith("/") else base.rstrip("/") + "/" + path)
        return f"WORKDIR {ins.args}"
    if c == "USER":
        cfg["User"] = expand(ins.args, env, escape)
        return f"USER {ins.args}"
    if c in ("CMD", "ENTRYPOINT"):
        argv = command(ins, stage)
        cfg["Cmd" if c == "CMD" else "Entrypoint"] = argv
        if c == "ENTRYPOINT":
            cfg["Cmd"] = None  # (an ENTRYPOINT resets the CMD inherited from the base, as in Docker)
        return f"{c} {json.dumps(argv)}"
    if c == "EXPOSE":
        ports = {}
        for p in split(ins.args, env, escape):
            ports[p if "/" in p else p + "/tcp"] = {}
        cfg["ExposedPorts"] = {**(cfg.get("ExposedPorts") or {}), **ports}
        return f"EXPOSE map[{' '.join(ports)}:{{}}]"
    if c == "VOLUME":
        vols = ins.exec_form if ins.exec_form is not None else split(ins.args, env, escape)
        cfg["Volumes"] = {**(cfg.get("Volumes") or {}), **{expand(v, env, escape): {} for v in vols}}
        return f"VOLUME {json.dumps(vols)}"
    if c == "SHELL":
        if ins.exec_form is None:
            raise InvalidInput("SHELL requires the arguments to be in JSON form")
        stage.shell = list(ins.exec_form)
        cfg["Shell"] = list(ins.exec_form)
        return f"SHELL {json.dumps(ins.exec_form)}"
    if c == "STOPSIGNAL":
        cfg["StopSignal"] = expand(ins.args, env, escape)
        return f"STOPSIGNAL {ins.args}"
    if c == "MAINTAINER":
        stage.author = ins.args
        return f"MAINTAINER {ins.args}"
    if c == "ONBUILD":
        word = ins.args.split(None, 1)[0].upper() if ins.args else ""
        if word in ("ONBUILD", "FROM", "MAINTAINER", ""):
            raise InvalidInput(f"ONBUILD {word or '(nothing)'} is not allowed")
        cfg["OnBuild"] = [*(cfg.get("OnBuild") or []), ins.args]
        return f"ONBUILD {ins.args}"
    if c == "HEALTHCHECK":
        cfg["Healthcheck"] = _healthcheck(ins, stage)
        return f"HEALTHCHECK {ins.args}"
    raise AssertionError(c)  # (ARG is the builder's: it needs the build's --build-arg values)


def _healthcheck(ins: Instruction, stage: Stage) -> dict[str, Any]:
    word, _, rest = ins.args.partition(" ")
    if word.upper() == "NONE":
        return {"Test": ["NONE"]}
    if word.upper() != "CMD":
        raise InvalidInput("HEALTHCHECK expects NONE or CMD …")
    rest = rest.strip()
    try:
        form = json.loads(rest) if rest.startswith("[") else None
    except ValueError:
        form = None
    test = ["CMD", *form] if isinstance(form, list) else ["CMD-SHELL", rest]
    out: dict[str, Any] = {"Test": test}
    names = {
        "interval": "Interval",
        "timeout": "Timeout",
        "start-period": "StartPeriod",
        "start-interval": "StartInterval",
    }
    for k, v in ins.flags.items():
        if k in names:
            out[names[k]] = _duration_ns(v or "", k)
        elif k == "retries":
            out["Retries"] = int(v or 0)
        else:
            raise InvalidInput(f"HEALTHCHECK: unknown flag --{k}")
    return out


def _duration_ns(text: str, what: str) -> int:
    units = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
    for u in sorted(units, key=len, reverse=True):
        if text.endswith(u) and text[: -len(u)].replace(".", "", 1).isdigit():
            return int(float(text[: -len(u)]) * units[u])
    raise InvalidInput(f"HEALTHCHECK --{what}={text}: not a duration (e.g. 30s)")


def _normpath(p: str) -> str:
    parts: list[str] = []
    for c in p.split("/"):
        if c in ("", "."):
            continue
        if c == "..":
            if parts:
                parts.pop()
            continue
        parts.append(c)
    return "/" + "/".join(parts)
