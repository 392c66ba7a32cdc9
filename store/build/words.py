"""Variable substitution and word splitting in Dockerfile arguments, as BuildKit's shell lexer does.

Quotes group and are removed (single quotes keep everything literal, double quotes allow ``$``
and the escapes ``\\"``, ``\\$``, ``\\\\``); the escape character outside quotes keeps the next one
literal; ``$V``, ``${V}``, ``${V:-x}``, ``${V-x}``, ``${V:+x}``, ``${V+x}``, ``${V:?msg}`` and
``${V?msg}`` expand from the variables given.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import InvalidInput

_NAME_START = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_NAME = _NAME_START | set("0123456789")


def expand(text: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """*text* as one word: variables expanded, quotes removed."""
    words = _Lexer(text, env, escape).words(split=False)
    return words[0] if words else ""


def split(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """*text* split into words at unquoted blanks, each expanded (a variable's value is not split)."""
    return _Lexer(text, env, escape).words(split=True)


def expand_heredoc(text: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """A here-document's text with its variables expanded, as a shell expands an unquoted one:
    quotes are text, and the escape character escapes only ``$``, itself and the backquote."""
    return "".join(_Lexer(text, env, escape, heredoc=True).words(split=False))


class _Lexer:
    def __init__(self, text: str, env: Mapping[str, str], escape: str, heredoc: bool = False) -> None:
        self.s, self.i, self.env, self.esc, self.heredoc = text, 0, env, escape, heredoc

    def _peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def _next(self) -> str:
        c = self._peek()
        self.i += 1
        return c

    def words(self, split: bool) -> list[str]:
        out: list[str] = []
        cur: list[str] = []
        started = False
        while self.i < len(self.s):
            c = self._next()
            if split and c in " \t\r\n":
                if started:
                    out.append("".join(cur))
                    cur, started = [], False
                continue
            started = True
            cur.append(self._piece(c))
        if started:
            out.append("".join(cur))
        return out

    def _piece(self, c: str) -> str:
        """What the character *c* just read stands for: an escaped character, a quoted string or a
        variable's value (each read on), or itself."""
        if c == self.esc:
            if self.heredoc and self._peek() not in ("$", "`", self.esc):
                return c
            nxt = self._next()
            return nxt if nxt else c
        if self.heredoc and c in "'\"":
            return c
        if c == "'":
            return self._single()
        if c == '"':
            return self._double()
        if c == "$":
            return self._dollar()
        return c

    def _single(self) -> str:
        end = self.s.find("'", self.i)
        if end < 0:
            raise InvalidInput("unexpected end of statement while looking for matching single-quote")
        word, self.i = self.s[self.i : end], end + 1
        return word

    def _double(self) -> str:
        cur: list[str] = []
        while True:
            if self.i >= len(self.s):
                raise InvalidInput("unexpected end of statement while looking for matching double-quote")
            c = self._next()
            if c == '"':
                return "".join(cur)
            if c == self.esc and self._peek() in ('"', "$", self.esc):
                cur.append(self._next())
            elif c == "$":
                cur.append(self._dollar())
            else:
                cur.append(c)

    def _name(self) -> str:
        start = self.i
        while self._peek() and self._peek() in _NAME:
            self.i += 1
        return self.s[start : self.i]

    def _dollar(self) -> str:
        c = self._peek()
        if c == "{":
            self.i += 1
            return self._braced()
        if c and c in _NAME_START:
            return self.env.get(self._name(), "")
        return "$"

    def _braced(self) -> str:
        name = self._name()
        if not name:
            raise InvalidInput(f"bad substitution in {self.s!r}")
        c = self._next()
        if c == "}":
            return self.env.get(name, "")
        colon = c == ":"
        if colon:
            c = self._next()
        if c not in ("-", "+", "?"):
            raise InvalidInput(f"unsupported modifier ({c or 'end'}) in substitution of {name} in {self.s!r}")
        word = self._until_brace()
        value = self.env.get(name)
        unset = value is None or (colon and value == "")
        if c == "-":
            return word if unset else value  # type: ignore[return-value]
        if c == "+":
            return "" if unset else word
        if unset:
            raise InvalidInput(f"{name}: {word or 'is not allowed to be unset'}")
        return value  # type: ignore[return-value]

    def _until_brace(self) -> str:
        """The word of a ``${V:-word}``, itself expanded, up to the closing brace."""
        cur: list[str] = []
        while True:
            c = self._next()
            if not c:
                raise InvalidInput(f"missing '}}' in {self.s!r}")
            if c == "}":
                return "".join(cur)
            cur.append(self._piece(c))
