"""`.dockerignore`: which context paths a build leaves out, by Docker's pattern rules (moby's
patternmatcher): Go filepath.Match patterns plus ``**``, ``!`` exceptions, the last match wins,
and a pattern that matches a directory leaves out everything below it."""

from __future__ import annotations

import os
import re
from pathlib import Path


class Ignore:
    def __init__(self, lines: list[str]) -> None:
        self.patterns: list[tuple[bool, re.Pattern[str]]] = []
        for line in lines:
            p = line.strip()
            if not p or p.startswith("#"):
                continue
            exception = p.startswith("!")
            if exception:
                p = p[1:].strip()
            p = os.path.normpath(p).lstrip("/")
            if p in ("", "."):
                continue
            self.patterns.append((exception, re.compile(_regex(p))))
        self.has_exceptions = any(e for e, _ in self.patterns)

    @classmethod
    def of_context(cls, context: Path) -> Ignore:
        try:
            return cls((context / ".dockerignore").read_text().splitlines())
        except FileNotFoundError:
            return cls([])

    def __call__(self, rel: str) -> bool:
        """Whether context path *rel* (relative, ``/``-separated) is left out."""
        parts = rel.strip("/").split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        out = False
        for exception, rx in self.patterns:
            if any(rx.fullmatch(p) for p in prefixes):
                out = not exception
        return out


def _regex(pattern: str) -> str:
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                i += 2
                if pattern.startswith("/", i):  # `**/`: any number of directories, none too
                    i += 1
                    out.append("(?:.*/)?")
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                if body.startswith("^"):
                    body = "!" + body[1:]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
                i = end
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)
