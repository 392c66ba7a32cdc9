"""Platforms (`os/arch[/variant]`) and picking an image out of an OCI index / Docker manifest list."""

from __future__ import annotations

import platform as _platform
from dataclasses import dataclass

from store.errors import InvalidInput

from .errors import NotFoundError

_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}
_DEFAULT_VARIANT = {"arm64": "v8"}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")

    def matches(self, other: Platform) -> bool:
        """Whether an index entry `other` satisfies this wanted platform (arm64 means arm64/v8)."""
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        if self.variant is None:
            return True
        default = _DEFAULT_VARIANT.get(self.architecture)
        return (other.variant or default) == self.variant


def parse(text: str) -> Platform:
    """`linux/arm64/v8` → Platform; `arch` aliases (x86_64, aarch64) are normalised."""
    parts = text.strip().lower().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidInput(f"invalid platform {text!r}: expected OS/ARCH[/VARIANT], e.g. linux/amd64")
    arch = _ARCH.get(parts[1], parts[1])
    return Platform(parts[0], arch, parts[2] if len(parts) == 3 else None)


def host() -> Platform:
    """The platform of this machine, as Docker names it."""
    machine = _platform.machine().lower()
    arch = _ARCH.get(machine, machine)
    variant = None
    if arch == "arm":
        variant = "v7" if machine.startswith("armv7") else "v6"
    return Platform("linux", arch, variant)


def of_entry(entry: dict) -> Platform | None:
    p = entry.get("platform")
    if not isinstance(p, dict) or not p.get("os") or not p.get("architecture"):
        return None
    return Platform(p["os"], p["architecture"], p.get("variant") or None)


def select(index: dict, wanted: Platform) -> dict:
    """The first manifest descriptor of `index` that matches `wanted` (raise listing the choices)."""
    available: list[str] = []
    fallback: dict | None = None
    for entry in index.get("manifests") or []:
        p = of_entry(entry)
        if p is None or p.os == "unknown":  # attestations and other non-image entries
            continue
        available.append(str(p))
        if wanted.matches(p):
            if wanted.variant is None and p.variant not in (None, _DEFAULT_VARIANT.get(p.architecture)):
                fallback = fallback or entry  # prefer the default variant on the host
                continue
            return entry
    if fallback is not None:
        return fallback
    listing = ", ".join(available) if available else "none"
    raise NotFoundError(f"no matching manifest for {wanted} in the manifest list entries (available: {listing})")
