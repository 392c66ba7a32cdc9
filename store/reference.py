"""Image references, normalised as Docker does.

`ubuntu` → `docker.io/library/ubuntu:latest`; `host:port/ns/repo:tag`; `repo@sha256:…`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidInput

DEFAULT_REGISTRY = "docker.io"
_LEGACY_REGISTRIES = {"index.docker.io", "registry-1.docker.io"}
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DOMAIN = re.compile(r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?\.?)+(?::[0-9]+)?$|^\[[0-9a-fA-F:]+\](?::[0-9]+)?$")


@dataclass(frozen=True)
class Reference:
    """A normalised image reference: registry, repository path, and a tag and/or a digest."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The full repository name, e.g. `docker.io/library/ubuntu`."""
        return f"{self.registry}/{self.repository}"

    @property
    def familiar_name(self) -> str:
        """The repository as Docker shows it: `ubuntu`, `user/app`, `host:5000/app`."""
        if self.registry == DEFAULT_REGISTRY:
            return self.repository.removeprefix("library/")
        return self.name

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.registry, self.repository, tag, None)

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    @property
    def familiar(self) -> str:
        """`ubuntu:latest` style, as in RepoTags."""
        return self.familiar_name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def parse(text: str, default_tag: str | None = "latest") -> Reference:
    """Parse and normalise `text`; a reference with neither tag nor digest gets `default_tag`."""
    original = text
    if not text or text != text.strip():
        raise InvalidInput(f"invalid reference format: {original!r}")
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise InvalidInput(f"invalid reference format: {original!r} (bad digest)")
    tag = None
    last = text.rsplit("/", 1)[-1]
    if ":" in last:
        text, tag = text.rsplit(":", 1)
        if not _TAG.match(tag):
            raise InvalidInput(f"invalid reference format: {original!r} (bad tag)")
    first, _, rest = text.partition("/")
    if rest and (("." in first or ":" in first or first == "localhost") and _DOMAIN.match(first)):
        registry, path = first, rest
    elif rest and first != first.lower():
        raise InvalidInput(f"invalid reference format: {original!r} (repository name must be lowercase)")
    else:
        registry, path = DEFAULT_REGISTRY, text
    if registry in _LEGACY_REGISTRIES:
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = "library/" + path
    for component in path.split("/"):
        if not _COMPONENT.match(component):
            raise InvalidInput(f"invalid reference format: {original!r}")
    if len(registry) + 1 + len(path) > 255:
        raise InvalidInput(f"invalid reference format: {original!r} (name too long)")
    if tag is None and digest is None:
        tag = default_tag
    return Reference(registry, path, tag, digest)
