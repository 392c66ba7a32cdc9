"""What `strata run` starts in a container: the process an image's config and the user's flags
describe, as Docker combines them."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidInput

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Process:
    argv: list[str]
    env: dict[str, str]
    workdir: str
    user: str


def process(
    config: dict,
    command: list[str],
    entrypoint: str | None = None,
    env: list[str] = (),  # type: ignore[assignment]
    workdir: str | None = None,
    user: str | None = None,
) -> Process:
    """*config*: the image config's ``config``.  ``--entrypoint`` replaces the image's entrypoint
    and drops its CMD; a COMMAND replaces the CMD."""
    ep = [entrypoint] if entrypoint is not None else list(config.get("Entrypoint") or [])
    if entrypoint == "":
        ep = []
    cmd = command or ([] if entrypoint is not None else list(config.get("Cmd") or []))
    argv = ep + cmd
    if not argv:
        raise InvalidInput("no command specified (the image has no Cmd or Entrypoint)")
    variables = dict(e.partition("=")[::2] for e in config.get("Env") or [])
    variables.setdefault("PATH", DEFAULT_PATH)
    for e in env:
        k, eq, v = e.partition("=")
        if not k:
            raise InvalidInput(f"invalid environment variable {e!r}")
        variables[k] = v if eq else ""
    return Process(argv, variables, workdir or config.get("WorkingDir") or "/", user or config.get("User") or "root")


def binds(specs: list[str]) -> list[tuple[str, str, bool]]:
    """``-v HOST:CONTAINER[:ro|rw]``: (absolute host path, container path, read-only)."""
    out = []
    for spec in specs:
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not parts[0].startswith("/") or not parts[1].startswith("/"):
            raise InvalidInput(f"invalid volume {spec!r}: expected /HOST:/CONTAINER[:ro]")
        mode = parts[2] if len(parts) == 3 else "rw"
        if mode not in ("ro", "rw"):
            raise InvalidInput(f"invalid volume mode {mode!r} in {spec!r}: ro or rw")
        out.append((parts[0], parts[1], mode == "ro"))
    return out
