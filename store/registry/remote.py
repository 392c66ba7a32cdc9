"""Read-only registry queries: `manifest inspect`, `search` (catalog or Docker Hub's search API), login."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from store import reference

from . import auth
from .client import USER_AGENT, ClientOptions, Registry, describe, error_detail
from .errors import AuthError, RegistryError, run

HUB_SEARCH = "https://index.docker.io/v1/search"


async def inspect_async(name: str, options: ClientOptions | None = None) -> tuple[bytes, str, str]:
    """The manifest or index `name` points to: (bytes, media type, digest)."""
    ref = reference.parse(name)
    async with Registry(ref.registry, options) as reg:
        return await reg.get_manifest(ref.repository, ref.digest or ref.tag or "latest", ref.familiar)


def inspect(name: str, options: ClientOptions | None = None) -> tuple[bytes, str, str]:
    return run(inspect_async, name, options)


@dataclass
class SearchHit:
    name: str
    description: str = ""
    stars: int = 0
    official: bool = False
    automated: bool = False


def _split_term(term: str) -> tuple[str, str]:
    """`host:5000/foo` → (`host:5000`, `foo`); `foo` → (`docker.io`, `foo`)."""
    first, sep, rest = term.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return auth.normalize_server(first), rest
    return "docker.io", term


def parse_filters(filters: tuple[str, ...] | list[str]) -> dict[str, str]:
    out = {}
    for f in filters:
        key, sep, value = f.partition("=")
        key = key.strip().lower()
        if not sep or key not in ("stars", "is-official", "is-automated"):
            raise RegistryError(f"invalid filter {f!r} (use stars=N, is-official=true|false, is-automated=true|false)")
        if key == "stars" and not value.isdigit():
            raise RegistryError(f"invalid filter {f!r}: stars needs a number")
        if key != "stars" and value.lower() not in ("true", "false"):
            raise RegistryError(f"invalid filter {f!r}: expected true or false")
        out[key] = value.lower()
    return out


def _keep(hit: SearchHit, filters: dict[str, str]) -> bool:
    if "stars" in filters and hit.stars < int(filters["stars"]):
        return False
    if "is-official" in filters and hit.official != (filters["is-official"] == "true"):
        return False
    return not ("is-automated" in filters and hit.automated != (filters["is-automated"] == "true"))


async def search_async(
    term: str, limit: int = 25, filters: tuple[str, ...] | list[str] = (), options: ClientOptions | None = None
) -> list[SearchHit]:
    """Repositories matching `term`: Docker Hub's search API, or another registry's `_catalog`."""
    want = parse_filters(filters)
    host, text = _split_term(term)
    if not 1 <= limit <= 100:
        raise RegistryError("limit must be between 1 and 100")
    hits: list[SearchHit] = []
    if host == "docker.io":
        async with httpx.AsyncClient(headers={"User-Agent": USER_AGENT}, timeout=30) as c:
            try:
                resp = await c.get(HUB_SEARCH, params={"q": text, "n": str(limit)})
            except httpx.TransportError as e:
                raise RegistryError(f"cannot reach Docker Hub search: {describe(e)}") from None
            if resp.status_code != 200:
                raise RegistryError(f"Docker Hub search: {error_detail(resp)}")
            for r in resp.json().get("results") or []:
                hits.append(
                    SearchHit(
                        r.get("name", ""),
                        r.get("description") or "",
                        int(r.get("star_count") or 0),
                        bool(r.get("is_official")),
                        bool(r.get("is_automated")),
                    )
                )
    else:
        async with Registry(host, options) as reg:
            repos = await reg.catalog()
        low = text.lower()
        hits = [SearchHit(f"{host}/{r}") for r in sorted(repos) if low in r.lower()]
    return [h for h in hits if _keep(h, want)][:limit]


def search(
    term: str, limit: int = 25, filters: tuple[str, ...] | list[str] = (), options: ClientOptions | None = None
) -> list[SearchHit]:
    return run(search_async, term, limit, filters, options)


async def login_async(server: str, creds: auth.Credentials, options: ClientOptions | None = None) -> str:
    """Check credentials against the registry, then store them; returns where they were stored."""
    host = auth.normalize_server(server)
    opts = options or ClientOptions()
    opts.credentials[host] = creds
    async with Registry(host, opts) as reg:
        await reg.connect()
        if reg.auth_scheme is not None:
            resp = await reg.request("GET", "/v2/")
            if resp.status_code in (401, 403):
                raise AuthError(f"login to {host} failed: unauthorized: incorrect username or password")
            if resp.status_code != 200:
                raise RegistryError(f"login to {host} failed: {error_detail(resp)}")
    return auth.store_credentials(host, creds)


def login(server: str, creds: auth.Credentials, options: ClientOptions | None = None) -> str:
    return run(login_async, server, creds, options)


def format_search(hits: list[SearchHit], no_trunc: bool = False) -> str:
    """Docker's search table: NAME DESCRIPTION STARS OFFICIAL."""
    rows = [("NAME", "DESCRIPTION", "STARS", "OFFICIAL")]
    for h in hits:
        desc = h.description.replace("\n", " ")
        if not no_trunc and len(desc) > 45:
            desc = desc[:44] + "…"
        rows.append((h.name, desc, str(h.stars), "[OK]" if h.official else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("   ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows)


__all__ = ["SearchHit", "format_search", "inspect", "login", "search"]
