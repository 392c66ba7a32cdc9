"""Dockerfile syntax, as BuildKit's parser reads it: parser directives, comments, line
continuations, ``--flags``, exec (JSON) and shell forms, and heredocs.

Only the syntax: which words mean what (variables, stages) is for the builder.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ..errors import InvalidInput

INSTRUCTIONS = (
    "ADD ARG CMD COPY ENTRYPOINT ENV EXPOSE FROM HEALTHCHECK LABEL MAINTAINER ONBUILD RUN SHELL "
    "STOPSIGNAL USER VOLUME WORKDIR"
).split()
# the instructions whose argument may be a JSON array (the exec form)
JSON_FORMS = {"ADD", "CMD", "COPY", "ENTRYPOINT", "HEALTHCHECK", "RUN", "SHELL", "VOLUME"}
HEREDOC_FORMS = {"ADD", "COPY", "RUN"}
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_HEREDOC = re.compile(r"<<(-?)(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\2")
_FLAG = re.compile(r"--([a-zA-Z][a-zA-Z0-9-]*)(?:=(\S*))?$")


class DockerfileError(InvalidInput):
    """Bad Dockerfile syntax, with the file and line it is on."""

    def __init__(self, name: str, line: int, message: str) -> None:
        super().__init__(f"{name}:{line}: {message}")
        self.line = line


@dataclass(frozen=True)
class Heredoc:
    name: str
    content: str
    expand: bool  # an unquoted terminator: the content's variables are expanded


@dataclass(frozen=True)
class Instruction:
    cmd: str  # upper case
    args: str  # the argument text, continuations joined, flags removed
    line: int  # where it starts (1-based)
    original: str  # the instruction as written (continuations joined)
    flags: dict[str, str | None] = field(default_factory=dict)
    exec_form: list[str] | None = None  # the JSON array, if the argument is one
    heredocs: tuple[Heredoc, ...] = ()


@dataclass(frozen=True)
class Dockerfile:
    instructions: list[Instruction]
    directives: dict[str, str]
    escape: str


def parse(text: str, name: str = "Dockerfile") -> Dockerfile:
    lines = text.splitlines()
    directives = _directives(lines, name)
    escape = directives.get("escape", "\\")
    out: list[Instruction] = []
    i = 0
    while i < len(lines):
        start = i
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        parts = [line]
        while _continues(parts[-1], escape):
            parts[-1] = parts[-1].rstrip()[:-1]
            while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith("#")):
                i += 1  # (comments and empty lines inside a continuation are dropped, as BuildKit)
            if i >= len(lines):
                break
            parts.append(lines[i].strip())
            i += 1
        joined = "".join(parts).strip()
        word, _, rest = joined.partition(" ")
        cmd = word.upper()
        if cmd not in INSTRUCTIONS:
            raise DockerfileError(name, start + 1, f"unknown instruction: {word}")
        heredocs: tuple[Heredoc, ...] = ()
        if cmd in HEREDOC_FORMS:
            heredocs, i = _heredocs(rest, lines, i, name, start + 1)
        flags, rest = _flags(rest.strip(), cmd, name, start + 1)
        out.append(Instruction(cmd, rest, start + 1, joined, flags, _exec_form(cmd, rest, name, start + 1), heredocs))
    if not any(x.cmd == "FROM" for x in out):
        raise DockerfileError(name, len(lines) or 1, "no FROM instruction (a build starts from an image, or scratch)")
    first = next(x for x in out if x.cmd not in ("ARG",))
    if first.cmd != "FROM":
        raise DockerfileError(name, first.line, f"{first.cmd} before the first FROM (only ARG may come before it)")
    return Dockerfile(out, directives, escape)


def _directives(lines: list[str], name: str) -> dict[str, str]:
    """The parser directives at the top (``# syntax=…``, ``# escape=…``), before anything else."""
    found: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        m = _DIRECTIVE.match(line.strip())
        if not m:
            break
        key, value = m[1].lower(), m[2]
        if key in found:
            raise DockerfileError(name, n, f"only one {key} parser directive can be used")
        found[key] = value
    if found.get("escape", "\\") not in ("\\", "`"):
        raise DockerfileError(name, 1, f"invalid escape token {found['escape']!r}: must be ` or \\")
    return found


def _continues(line: str, escape: str) -> bool:
    return line.rstrip().endswith(escape)


def _flags(rest: str, cmd: str, name: str, line: int) -> tuple[dict[str, str | None], str]:
    flags: dict[str, str | None] = {}
    while rest.startswith("--"):
        word, _, tail = rest.partition(" ")
        m = _FLAG.match(word)
        if not m:
            raise DockerfileError(name, line, f"{cmd}: bad flag {word!r}")
        flags[m[1]] = m[2]
        rest = tail.lstrip()
    return flags, rest


def _exec_form(cmd: str, rest: str, name: str, line: int) -> list[str] | None:
    if cmd not in JSON_FORMS or not rest.startswith("["):
        return None
    try:
        value = json.loads(rest)
    except ValueError:
        if "]" not in rest:  # (`RUN [ -f x ] && …` is shell form, as in Docker)
            raise DockerfileError(name, line, f"{cmd}: unterminated JSON array: {rest}") from None
        return None
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return value
    return None


def _heredocs(rest: str, lines: list[str], i: int, name: str, line: int) -> tuple[tuple[Heredoc, ...], int]:
    """The heredocs that *rest* opens, read from *lines* from index *i* on; returns them and the
    index after the last."""
    docs = []
    for m in _HEREDOC.finditer(rest):
        strip_tabs, quote, word = m[1] == "-", m[2], m[3]
        body = []
        while True:
            if i >= len(lines):
                raise DockerfileError(name, line, f"unterminated heredoc <<{word}: no line {word!r} after it")
            text = lines[i]
            i += 1
            if strip_tabs:
                text = text.lstrip("\t")
            if text == word:
                break
            body.append(text + "\n")
        docs.append(Heredoc(word, "".join(body), expand=not quote))
    return tuple(docs), i
