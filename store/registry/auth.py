"""Credentials as Docker keeps them (`config.json`, credential helpers) and auth challenges.

The file is `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`); `auths` maps a server to
`{"auth": base64("user:password")}`; `credHelpers` (per server) and `credsStore` (default) name a
`docker-credential-NAME` program speaking the helper protocol (`get`/`store`/`erase` on stdin).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import RegistryError

DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


@dataclass
class Challenge:
    """One `WWW-Authenticate` challenge: scheme (`basic`/`bearer`, lower case) and its parameters."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


def config_dir() -> Path:
    """`$DOCKER_CONFIG`, else `~/.docker`."""
    env = os.environ.get("DOCKER_CONFIG")
    return Path(env) if env else Path.home() / ".docker"


def config_path() -> Path:
    return config_dir() / "config.json"


def normalize_server(server: str) -> str:
    """`https://host:5000/v1/` → `host:5000`; every Docker Hub alias → `docker.io`."""
    s = re.sub(r"^[a-z]+://", "", server.strip()).rstrip("/")
    s = s.split("/", 1)[0]
    return "docker.io" if s in _HUB_ALIASES else s


def config_key(server: str) -> str:
    """The key Docker uses in `auths` for a server (Docker Hub's is the legacy v1 URL)."""
    host = normalize_server(server)
    return DOCKER_HUB_KEY if host == "docker.io" else host


def load_config() -> dict:
    path = config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise RegistryError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise RegistryError(f"cannot read {path}: not a JSON object")
    return data


def save_config(data: dict) -> None:
    """Write config.json atomically, readable by the owner only."""
    path = config_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=".config.json.")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent="\t")
            f.write("\n")
        os.chmod(name, 0o600)
        os.replace(name, path)
    except OSError as e:
        raise RegistryError(f"cannot write {path}: {e.strerror}") from None


def _helper_for(data: dict, host: str) -> str | None:
    helpers = data.get("credHelpers") or {}
    for key, name in helpers.items():
        if normalize_server(key) == host:
            return name
    return data.get("credsStore") or None


def _helper_binary(name: str) -> str | None:
    return shutil.which(f"docker-credential-{name}")


def _run_helper(binary: str, action: str, payload: str) -> str:
    try:
        proc = subprocess.run([binary, action], input=payload.encode(), capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RegistryError(f"credential helper {binary} failed: {e}") from None
    out = proc.stdout.decode(errors="replace").strip()
    if proc.returncode != 0:
        if "credentials not found" in out.lower():
            return ""
        raise RegistryError(f"credential helper {binary} {action} failed: {out or proc.stderr.decode().strip()}")
    return out


def get_credentials(server: str) -> Credentials | None:
    """The stored credentials for a server, from its helper or from `auths`; None if there are none."""
    host = normalize_server(server)
    data = load_config()
    helper = _helper_for(data, host)
    if helper and (binary := _helper_binary(helper)):
        for key in dict.fromkeys([config_key(host), host, "https://" + host]):
            out = _run_helper(binary, "get", key)
            if out:
                try:
                    reply = json.loads(out)
                    return Credentials(reply["Username"], reply["Secret"])
                except (ValueError, KeyError, TypeError):
                    raise RegistryError(f"credential helper {binary} returned malformed output") from None
    for key, entry in (data.get("auths") or {}).items():
        if normalize_server(key) != host or not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise RegistryError(f"invalid auth entry for {key} in {config_path()}") from None
            return Credentials(user, password)
        if entry.get("username") and entry.get("password"):
            return Credentials(entry["username"], entry["password"])
    return None


def store_credentials(server: str, creds: Credentials) -> str:
    """Save credentials (in the configured helper if its program exists); return where they went."""
    host = normalize_server(server)
    data = load_config()
    helper = _helper_for(data, host)
    if helper and (binary := _helper_binary(helper)):
        payload = json.dumps({"ServerURL": config_key(host), "Username": creds.username, "Secret": creds.password})
        _run_helper(binary, "store", payload)
        auths = data.setdefault("auths", {})
        auths.setdefault(config_key(host), {})
        save_config(data)
        return f"credential helper {helper}"
    auths = data.setdefault("auths", {})
    for key in [k for k in auths if normalize_server(k) == host]:
        del auths[key]
    token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
    auths[config_key(host)] = {"auth": token}
    save_config(data)
    return str(config_path())


def erase_credentials(server: str) -> bool:
    """Forget a server's credentials; False if there were none."""
    host = normalize_server(server)
    data = load_config()
    found = False
    helper = _helper_for(data, host)
    if helper and (binary := _helper_binary(helper)):
        try:
            _run_helper(binary, "erase", config_key(host))
            found = True
        except RegistryError:
            pass
    auths = data.get("auths") or {}
    for key in [k for k in auths if normalize_server(k) == host]:
        del auths[key]
        found = True
    if found:
        save_config(data)
    return found


_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


def parse_challenges(header: str) -> list[Challenge]:
    """Parse `WWW-Authenticate: Bearer realm="…",service="…",scope="…"` (or Basic) into challenges."""
    out: list[Challenge] = []
    rest = header.strip()
    while rest:
        m = re.match(r"([A-Za-z][A-Za-z0-9_-]*)\s*", rest)
        if not m:
            break
        scheme = m.group(1).lower()
        rest = rest[m.end() :]
        params: dict[str, str] = {}
        while True:
            p = _PARAM.match(rest)
            if not p or (p.group(2) is None and p.group(3) is None):
                break
            value = p.group(2) if p.group(2) is not None else p.group(3)
            params[p.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            rest = rest[p.end() :]
        out.append(Challenge(scheme, params))
        rest = rest.lstrip(", ")
    return out
