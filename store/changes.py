"""Dockerfile-style config changes (`import -c`, `commit -c`): CMD, ENTRYPOINT, ENV, EXPOSE, …"""

from __future__ import annotations

import json
import shlex
from typing import Any

from .errors import InvalidInput

ALLOWED = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "ONBUILD", "USER", "VOLUME", "WORKDIR")


def _json_or_shell(arg: str) -> list[str]:
    """Exec form (a JSON array) as given, shell form wrapped in `/bin/sh -c`."""
    if arg.startswith("["):
        try:
            value = json.loads(arg)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(x, str) for x in value):
            return value
    return ["/bin/sh", "-c", arg]


def _pairs(arg: str, what: str) -> list[tuple[str, str]]:
    """`K=V K2="v 2"` pairs, or the legacy `K V` form."""
    words = shlex.split(arg)
    if words and "=" not in words[0]:
        if len(words) < 2:
            raise InvalidInput(f"{what} needs a value: {arg!r}")
        return [(words[0], arg.split(None, 1)[1])]
    out = []
    for w in words:
        if "=" not in w:
            raise InvalidInput(f"{what} expects KEY=VALUE pairs: {arg!r}")
        k, v = w.split("=", 1)
        out.append((k, v))
    return out


def apply(config: dict[str, Any], changes: list[str], allowed: tuple[str, ...] = ALLOWED) -> dict[str, Any]:
    """Apply each change (e.g. `ENV A=1`) to a container config dict (`Config` of an image)."""
    for change in changes:
        word, _, arg = change.strip().partition(" ")
        instr = word.upper()
        arg = arg.strip()
        if instr not in allowed:
            raise InvalidInput(f"{word or change!r} is not a valid change command (allowed: {', '.join(allowed)})")
        if not arg:
            raise InvalidInput(f"{instr} needs an argument")
        if instr in ("CMD", "ENTRYPOINT"):
            config["Cmd" if instr == "CMD" else "Entrypoint"] = _json_or_shell(arg)
        elif instr == "ENV":
            env = [e for e in config.get("Env") or []]
            for k, v in _pairs(arg, "ENV"):
                env = [e for e in env if e.split("=", 1)[0] != k] + [f"{k}={v}"]
            config["Env"] = env
        elif instr == "LABEL":
            labels = dict(config.get("Labels") or {})
            labels.update(_pairs(arg, "LABEL"))
            config["Labels"] = labels
        elif instr == "EXPOSE":
            ports = dict(config.get("ExposedPorts") or {})
            for p in arg.split():
                ports[p if "/" in p else f"{p}/tcp"] = {}
            config["ExposedPorts"] = ports
        elif instr == "VOLUME":
            vols = dict(config.get("Volumes") or {})
            names = json.loads(arg) if arg.startswith("[") else arg.split()
            for v in names:
                vols[v] = {}
            config["Volumes"] = vols
        elif instr == "USER":
            config["User"] = arg
        elif instr == "WORKDIR":
            config["WorkingDir"] = arg
        elif instr == "ONBUILD":
            config["OnBuild"] = (config.get("OnBuild") or []) + [arg]
    return config
