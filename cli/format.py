"""Presentation: Docker's human sizes and durations, and its Go-template subset for `--format`."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import click

_UNITS = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"]


def human_size(size: float, precision: int = 3) -> str:
    """go-units HumanSizeWithPrecision: decimal units, `precision` significant digits."""
    i = 0
    while size >= 1000 and i < len(_UNITS) - 1:
        size /= 1000.0
        i += 1
    return f"{size:.{precision}g}{_UNITS[i]}"


def human_duration(seconds: float) -> str:
    """go-units HumanDuration."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def since(when: datetime) -> str:
    return human_duration((datetime.now(UTC) - when).total_seconds()) + " ago"


def docker_time(when: datetime) -> str:
    """Docker's CreatedAt form: `2024-01-01 00:00:00 +0000 UTC`."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


def go_value(value: Any) -> str:
    """How Go's text/template prints a value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "<no value>"
    if isinstance(value, list):
        return "[" + " ".join(go_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_value(v)}" for k, v in sorted(value.items())) + "]"
    return str(value)


_ACTION = re.compile(r"{{-?\s*(.*?)\s*-?}}")


class FieldError(ValueError):
    """A field that a listing's rows (Go structs, in Docker) do not have."""


def _lookup(data: Any, path: str, fields: bool = False) -> Any:
    """*path* in *data*; *fields*: *data*'s keys are a struct's fields (a missing one is an error, as
    Go's template says of a struct), not a map's keys (a missing one is ``<no value>``)."""
    if path == ".":
        return data
    parts = path.lstrip(".").split(".")
    if fields and isinstance(data, dict) and parts[0] not in data:
        raise FieldError(f"can't evaluate field {parts[0]}")
    for part in parts:
        if isinstance(data, dict):
            data = data.get(part)
        else:
            data = getattr(data, part, None)
    return data


def _action(expr: str, data: Any, fields: bool) -> str:
    words = expr.split()
    if not words:
        raise ValueError("empty action")
    if words[0] == "json" and len(words) == 2:
        return json.dumps(_lookup(data, words[1], fields))
    if words[0] in ("upper", "lower") and len(words) == 2:
        s = go_value(_lookup(data, words[1], fields))
        return s.upper() if words[0] == "upper" else s.lower()
    if len(words) == 1 and words[0].startswith("."):
        return go_value(_lookup(data, words[0], fields))
    raise ValueError(f"unsupported template action {{{{{expr}}}}}")


def render(template: str, data: Any, fields: bool = False) -> str:
    """Render Docker's Go-template subset: `{{.Field}}`, `{{.A.B}}`, `{{json .X}}`, `\\t`, `\\n`;
    *fields*: *data* is a listing's row, whose keys are fields (see :func:`_lookup`)."""
    template = template.replace("\\t", "\t").replace("\\n", "\n")
    return _ACTION.sub(lambda m: _action(m.group(1), data, fields), template)


def table(template: str, rows: list[dict[str, Any]], headers: dict[str, str]) -> str:
    """`table {{.A}}\\t{{.B}}`: a header row from `headers`, columns aligned like Docker's tabwriter."""
    body = template.removeprefix("table").strip()
    head = _ACTION.sub(lambda m: headers.get(m.group(1).lstrip("."), m.group(1).lstrip(".").upper()), body)
    lines = [head.replace("\\t", "\t")] + [render(body, r, True) for r in rows]
    return tabulate(lines)


def tabulate(lines: list[str], padding: int = 3) -> str:
    """Align tab-separated cells into columns (cells padded to the widest plus `padding`)."""
    cells = [line.split("\t") for line in lines]
    width = max((len(c) for c in cells), default=0)
    widths = [max((len(c[i]) for c in cells if i < len(c) - 1), default=0) for i in range(width)]
    return "\n".join(
        "".join(c.ljust(widths[i] + padding) if i < len(row) - 1 else c for i, c in enumerate(row)).rstrip()
        for row in cells
    )


def output(template: str | None, rows: list[dict[str, Any]], default: str, headers: dict[str, str]) -> str:
    """Render rows with `--format` (`table …`, `json`, or a plain template), else the default table."""
    if template == "json":
        return "\n".join(json.dumps(r, default=str) for r in rows)
    fmt = template or default
    try:
        if fmt.startswith("table"):
            return table(fmt, rows, headers)
        return "\n".join(render(fmt, r, True) for r in rows)
    except FieldError as e:
        raise TemplateError(f"template: executing {fmt!r}: {e}") from None
    except ValueError as e:
        raise TemplateError(f"template parsing error: {e}") from None


class TemplateError(Exception):
    pass


def echo_removed(title: str, items: list[str]) -> None:
    """Docker's listing of what a prune removed: a title, one line each, a blank line."""
    if items:
        click.echo(title)
        for i in items:
            click.echo(i)
        click.echo()
