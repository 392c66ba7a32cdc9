"""HTTP to one registry: endpoint discovery (https, then http for insecure/loopback hosts), TLS
policy, auth (basic and bearer tokens, refreshed on 401), and bounded retries with backoff on
dropped connections, 5xx and 429 (honouring `Retry-After`).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import certifi
import httpx
import trio

from store import digest as dg
from store import mediatypes as mt
from store.errors import DigestMismatch

from . import auth
from .errors import AuthError, NotFoundError, RegistryError

USER_AGENT = "strata/0.1"
MANIFEST_ACCEPT = ", ".join([mt.OCI_INDEX, mt.DOCKER_LIST, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST])
MAX_MANIFEST = 4 << 20
DENIED = "denied: requested access to the resource is denied"


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass
class ClientOptions:
    """Knobs of the HTTP layer; `insecure` lists hosts allowed to use plain HTTP / unverified TLS."""

    insecure: frozenset[str] = frozenset()
    max_connections: int = 4
    retries: int = 4
    backoff: float = field(default_factory=lambda: _env_float("STRATA_RETRY_BACKOFF", 0.5))
    max_retry_after: float = 60.0
    timeout: float = 60.0
    credentials: dict[str, auth.Credentials] = field(default_factory=dict)  # host → explicit credentials


def insecure_registries(extra: tuple[str, ...] | list[str] = ()) -> frozenset[str]:
    """The `--insecure-registry` hosts plus `$STRATA_INSECURE_REGISTRIES` (comma or space separated)."""
    env = re.split(r"[,\s]+", os.environ.get("STRATA_INSECURE_REGISTRIES", ""))
    return frozenset(auth.normalize_server(h) for h in [*env, *extra] if h)


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 and ::1, with or without a port."""
    name = host
    if name.startswith("["):
        name = name[1 : name.find("]")]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def api_host(host: str) -> str:
    """Where the registry API of a reference's registry lives (Docker Hub is special)."""
    return "registry-1.docker.io" if host == "docker.io" else host


def _ssl_context(host: str, verify: bool) -> ssl.SSLContext:
    if not verify:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or certifi.where())
    certs_d = Path(os.environ.get("STRATA_CERTS_D", "/etc/docker/certs.d")) / host
    if certs_d.is_dir():
        for crt in sorted(certs_d.glob("*.crt")):
            ctx.load_verify_locations(cafile=str(crt))
    return ctx


def describe(exc: BaseException) -> str:
    """A short reason for a transport error (`connection refused`, `no such host`, TLS …)."""
    text = str(exc) or type(exc).__name__
    chain, e = [], exc
    while e is not None and len(chain) < 8:
        chain.append(str(e))
        e = e.__cause__ or e.__context__
        if isinstance(e, BaseExceptionGroup):
            chain += [str(x) for x in e.exceptions]
    low = " ".join(chain).lower()
    if "refused" in low:
        return "connection refused"
    if any(
        s in low
        for s in (
            "name or service not known",
            "no address associated",
            "name resolution",
            "nodename nor servname",
            "no such host",
            "errno -2",
            "errno -3",
            "errno -5",
        )
    ):
        return "no such host"
    if "certificate" in low:
        return f"TLS certificate verification failed ({text})"
    if "ssl" in low or "tls" in low:
        return f"TLS handshake failed ({text})"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return text


def error_detail(resp: httpx.Response) -> str:
    """`code: message` from a Distribution error body, else the HTTP status."""
    try:
        body = json.loads(resp.content[:65536])
        errors = body.get("errors") or []
        if errors:
            e = errors[0]
            return f"{str(e.get('code', '')).lower().replace('_', ' ')}: {e.get('message', '')}".strip(": ")
        if body.get("message"):
            return str(body["message"])
    except (ValueError, AttributeError, httpx.ResponseNotRead):
        pass
    return f"HTTP {resp.status_code} {resp.reason_phrase}".strip()


def _retry_after(resp: httpx.Response, default: float, cap: float) -> float:
    value = resp.headers.get("retry-after", "")
    try:
        return min(max(float(value), 0.0), cap)
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime

        return min(max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0), cap)
    except (TypeError, ValueError):
        return default


class Registry:
    """A connection to one registry host; use as `async with Registry(host, options) as r:`."""

    def __init__(self, host: str, options: ClientOptions | None = None) -> None:
        self.host = auth.normalize_server(host)
        self.options = options or ClientOptions()
        self.api_host = api_host(self.host)
        self.insecure = self.host in self.options.insecure or is_loopback(self.host)
        self.base: str | None = None
        self.tls_verified: bool | None = None  # after connect(): https with a verified certificate?
        self._clients: dict[bool, httpx.AsyncClient] = {}
        self._client: httpx.AsyncClient | None = None
        self._challenge: auth.Challenge | None = None
        self._tokens: dict[str, tuple[str, float]] = {}
        self._creds: auth.Credentials | None | bool = False  # False: not looked up yet
        self._connect_lock = trio.Lock()
        self._token_lock = trio.Lock()

    async def __aenter__(self) -> Registry:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for c in self._clients.values():
            await c.aclose()
        self._clients.clear()

    # -- plumbing --------------------------------------------------------------------------------
    def _http(self, verify: bool) -> httpx.AsyncClient:
        if verify not in self._clients:
            self._clients[verify] = httpx.AsyncClient(
                verify=_ssl_context(self.host, verify),
                timeout=httpx.Timeout(self.options.timeout, connect=15.0),
                limits=httpx.Limits(max_connections=self.options.max_connections + 2),
                headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
                trust_env=False,
            )
        return self._clients[verify]

    @property
    def credentials(self) -> auth.Credentials | None:
        if self._creds is False:
            self._creds = self.options.credentials.get(self.host) or auth.get_credentials(self.host)
        return self._creds  # type: ignore[return-value]

    async def connect(self) -> None:
        """Find the API endpoint (GET /v2/) and remember its auth challenge."""
        async with self._connect_lock:
            if self.base is not None:
                return
            candidates = [("https", True)]
            if self.insecure:
                candidates += [("https", False), ("http", False)]
            last: BaseException | None = None
            for scheme, verify in candidates:
                client = self._http(verify)
                url = f"{scheme}://{self.api_host}/v2/"
                try:
                    resp = await self._ping(client, url)
                except httpx.TransportError as e:
                    last = e
                    reason = describe(e)
                    if reason == "no such host" or (reason == "connection refused" and self._has_port):
                        break  # http on the same host and port cannot do better
                    continue
                self.base, self._client = f"{scheme}://{self.api_host}", client
                self.tls_verified = scheme == "https" and verify
                if resp.status_code == 401:
                    self._set_challenge(resp)
                elif resp.status_code != 200:
                    raise RegistryError(
                        f"{self.host} does not look like a registry: GET {url} answered {resp.status_code}"
                    )
                return
            reason = describe(last) if last else "no endpoint"
            hint = ""
            if "TLS" in reason and not self.insecure:
                hint = f"; if it serves plain HTTP or a self-signed certificate, use --insecure-registry {self.host}"
            raise RegistryError(f"cannot reach registry {self.host}: {reason}{hint}")

    async def _ping(self, client: httpx.AsyncClient, url: str) -> httpx.Response:
        for attempt in range(self.options.retries + 1):
            try:
                resp = await client.get(url)
            except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout):
                if attempt == self.options.retries:
                    raise
                await trio.sleep(self.options.backoff * 2**attempt)
                continue
            if (resp.status_code >= 500 or resp.status_code == 429) and attempt < self.options.retries:
                await trio.sleep(_retry_after(resp, self.options.backoff * 2**attempt, self.options.max_retry_after))
                continue
            return resp
        raise AssertionError("unreachable")

    @property
    def _has_port(self) -> bool:
        return bool(re.search(r":\d+$", self.api_host))

    def _set_challenge(self, resp: httpx.Response) -> None:
        for ch in auth.parse_challenges(resp.headers.get("www-authenticate", "")):
            if ch.scheme in ("bearer", "basic"):
                self._challenge = ch
                return

    @property
    def auth_scheme(self) -> str | None:
        """`basic`, `bearer`, or None when the registry asked for no auth."""
        return self._challenge.scheme if self._challenge else None

    async def _authorization(self, scope: str | None, force: bool = False) -> str | None:
        ch = self._challenge
        if ch is None:
            return None
        creds = self.credentials
        if ch.scheme == "basic":
            if creds is None:
                return None
            return "Basic " + base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
        key = scope or ""
        async with self._token_lock:
            cached = self._tokens.get(key)
            if cached and not force and cached[1] > time.monotonic():
                return "Bearer " + cached[0]
            token, ttl = await self._fetch_token(ch, scope)
            self._tokens[key] = (token, time.monotonic() + max(ttl, 60) - 10)
            return "Bearer " + token

    async def _fetch_token(self, ch: auth.Challenge, scope: str | None) -> tuple[str, float]:
        realm = ch.params.get("realm")
        if not realm:
            raise RegistryError(f"{self.host}: bearer challenge without a realm")
        params: list[tuple[str, str]] = []
        if ch.params.get("service"):
            params.append(("service", ch.params["service"]))
        for s in (scope or ch.params.get("scope") or "").split():
            params.append(("scope", s))
        creds = self.credentials
        basic = (creds.username, creds.password) if creds else None
        client = self._client or self._http(True)
        last: BaseException | None = None
        for attempt in range(self.options.retries + 1):
            try:
                resp = await client.get(realm, params=params, auth=basic)
            except httpx.TransportError as e:
                last = e
                if describe(e) in ("connection refused", "no such host") or attempt == self.options.retries:
                    break
                await trio.sleep(self.options.backoff * 2**attempt)
                continue
            if resp.status_code >= 500 and attempt < self.options.retries:
                await trio.sleep(self.options.backoff * 2**attempt)
                continue
            if resp.status_code in (401, 403):
                if creds:
                    raise AuthError(f"{self.host}: unauthorized: incorrect username or password")
                raise AuthError(DENIED)
            if resp.status_code != 200:
                raise RegistryError(f"token server {realm}: {error_detail(resp)}")
            try:
                body = resp.json()
                token = body.get("token") or body.get("access_token")
                ttl = float(body.get("expires_in") or 60)
            except (ValueError, AttributeError, TypeError):
                token = None
            if not token:
                raise RegistryError(f"token server {realm} returned no token")
            return token, ttl
        raise RegistryError(f"cannot reach token server {realm}: {describe(last) if last else 'failed'}")

    async def request(
        self,
        method: str,
        path: str,
        *,
        scope: str | None = None,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        params: dict[str, str] | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """Send a request (retried on dropped connections, 5xx and 429; re-authenticated once on 401).

        `path` is relative to the registry (`/v2/…`) or an absolute URL (upload locations).
        With `stream`, the caller must close the response.
        """
        await self.connect()
        assert self.base is not None and self._client is not None
        url = path if re.match(r"^https?://", path) else self.base + path
        attempt = 0
        reauthed = False
        force = False
        while True:
            h = dict(headers or {})
            if (authz := await self._authorization(scope, force)) is not None:
                h["Authorization"] = authz
            force = False
            req = self._client.build_request(method, url, headers=h, content=content, params=params)
            try:
                resp = await self._client.send(req, stream=stream, follow_redirects=method in ("GET", "HEAD"))
            except httpx.TransportError as e:
                if attempt >= self.options.retries or describe(e) == "no such host":
                    raise RegistryError(
                        f"{method} {self.host}{httpx.URL(url).path}: {describe(e)} (after {attempt + 1} attempts)"
                    ) from None
                attempt += 1
                await trio.sleep(self.options.backoff * 2 ** (attempt - 1))
                continue
            if resp.status_code == 401 and not reauthed and self._challenge is not None:
                reauthed = True
                old = self._challenge
                self._set_challenge(resp)
                if self._challenge.scheme == "bearer" or old.scheme != self._challenge.scheme:
                    await resp.aclose()
                    force = True
                    continue
            if (resp.status_code == 429 or resp.status_code in (500, 502, 503, 504)) and attempt < self.options.retries:
                delay = self.options.backoff * 2**attempt
                if resp.status_code == 429 or "retry-after" in resp.headers:
                    delay = _retry_after(resp, delay, self.options.max_retry_after)
                await resp.aclose()
                attempt += 1
                await trio.sleep(delay)
                continue
            return resp

    def familiar(self, repo: str) -> str:
        """A repository as Docker names it in messages (`ubuntu`, `host:5000/app`)."""
        if self.host == "docker.io":
            return repo.removeprefix("library/")
        return f"{self.host}/{repo}"

    def fail(self, resp: httpx.Response, what: str, op: str = "pull", repo: str | None = None) -> RegistryError:
        """The error to raise for an unexpected response to a request about `what`."""
        if stream_unread(resp):
            detail = f"HTTP {resp.status_code} {resp.reason_phrase}"
        else:
            detail = error_detail(resp)
        code = resp.status_code
        if code in (401, 403):
            if code == 401 and self.auth_scheme == "basic" and self.credentials is not None:
                return AuthError(f"{self.host}: unauthorized: incorrect username or password")
            if op == "pull" and repo:
                return AuthError(
                    f"pull access denied for {repo}, repository does not exist or may require "
                    f"'strata login {self.host}': {DENIED}"
                )
            return AuthError(DENIED)
        if code == 404:
            return NotFoundError(f"{what} not found: {detail}")
        if code == 429:
            return RegistryError(f"{what}: toomanyrequests: the registry is rate limiting us; try again later")
        if code >= 500:
            return RegistryError(f"{what}: registry error ({detail}) after {self.options.retries + 1} attempts")
        return RegistryError(f"{what}: {detail}")

    # -- the API ---------------------------------------------------------------------------------
    async def get_manifest(self, repo: str, ref: str, familiar: str = "") -> tuple[bytes, str, str]:
        """GET a manifest or index by tag or digest; returns (bytes, media type, digest), verified."""
        what = f"manifest for {familiar or repo + ':' + ref}"
        resp = await self.request(
            "GET", f"/v2/{repo}/manifests/{ref}", scope=f"repository:{repo}:pull", headers={"Accept": MANIFEST_ACCEPT}
        )
        if resp.status_code != 200:
            raise self.fail(resp, what, "pull", self.familiar(repo))
        data = resp.content
        if len(data) > MAX_MANIFEST:
            raise RegistryError(f"{what}: manifest too large ({len(data)} bytes)")
        actual = dg.of_bytes(data)
        if dg.is_digest(ref):
            dg.check(actual, ref, what)
        else:
            announced = resp.headers.get("docker-content-digest", "")
            if announced.startswith("sha256:") and announced != actual:
                raise DigestMismatch(f"{what}: digest mismatch (registry says {announced}, got {actual})")
        media_type = resp.headers.get("content-type", "").split(";")[0].strip()
        try:
            body = json.loads(data)
        except ValueError:
            raise RegistryError(f"{what}: not valid JSON") from None
        if isinstance(body, dict) and body.get("mediaType"):
            media_type = body["mediaType"]
        elif media_type not in (*mt.MANIFESTS, *mt.INDEXES) and isinstance(body, dict):
            media_type = mt.OCI_INDEX if "manifests" in body else mt.OCI_MANIFEST
        return data, media_type, actual

    @asynccontextmanager
    async def blob(
        self, repo: str, digest: str, headers: dict[str, str] | None = None
    ) -> AsyncIterator[httpx.Response]:
        """GET a blob as a streaming response (status checked)."""
        resp = await self.request(
            "GET", f"/v2/{repo}/blobs/{digest}", scope=f"repository:{repo}:pull", headers=headers, stream=True
        )
        try:
            if resp.status_code not in (200, 206):
                await resp.aread()
                raise self.fail(resp, f"blob {digest}", "pull", self.familiar(repo))
            yield resp
        finally:
            await resp.aclose()

    async def has_blob(self, repo: str, digest: str, scope: str | None = None) -> bool:
        resp = await self.request("HEAD", f"/v2/{repo}/blobs/{digest}", scope=scope or f"repository:{repo}:pull")
        if resp.status_code == 200:
            return True
        if resp.status_code == 404:
            return False
        raise self.fail(resp, f"blob {digest}", "push", repo)

    async def _paginate(self, path: str, key: str, scope: str | None, limit: int | None = None) -> list[str]:
        out: list[str] = []
        url: str | None = path
        while url:
            resp = await self.request("GET", url, scope=scope)
            if resp.status_code != 200:
                raise self.fail(resp, path.split("?")[0], "pull", None)
            try:
                out += resp.json().get(key) or []
            except (ValueError, AttributeError):
                raise RegistryError(f"{self.host}{path}: not valid JSON") from None
            if limit is not None and len(out) >= limit:
                break
            link = resp.links.get("next", {}).get("url")
            url = str(resp.url.join(link)) if link else None
        return out

    async def tags(self, repo: str) -> list[str]:
        """Every tag of a repository (follows `Link` pagination)."""
        return await self._paginate(f"/v2/{repo}/tags/list", "tags", f"repository:{repo}:pull")

    async def catalog(self, limit: int | None = None) -> list[str]:
        """The repositories of the registry (`/v2/_catalog`, paginated)."""
        return await self._paginate("/v2/_catalog?n=1000", "repositories", "registry:catalog:*", limit)

    def _location(self, resp: httpx.Response) -> str:
        loc = resp.headers.get("location")
        if not loc:
            raise RegistryError(f"{self.host}: upload response without a Location header")
        return str(resp.url.join(loc))

    async def mount_blob(self, repo: str, digest: str, source: str) -> str | None:
        """Try a cross-repository mount; None when mounted, else the upload URL the registry opened."""
        resp = await self.request(
            "POST",
            f"/v2/{repo}/blobs/uploads/",
            params={"mount": digest, "from": source},
            scope=f"repository:{repo}:pull,push repository:{source}:pull",
        )
        if resp.status_code == 201:
            return None
        if resp.status_code == 202:
            return self._location(resp)
        raise self.fail(resp, f"mount of {digest}", "push", repo)

    async def start_upload(self, repo: str) -> str:
        resp = await self.request("POST", f"/v2/{repo}/blobs/uploads/", scope=f"repository:{repo}:pull,push")
        if resp.status_code != 202:
            raise self.fail(resp, f"upload to {repo}", "push", repo)
        return self._location(resp)

    async def upload_blob(
        self,
        repo: str,
        digest: str,
        read_chunk: Callable[[int, int], bytes],
        size: int,
        location: str | None = None,
        chunk_size: int = 16 << 20,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Upload a blob: monolithic PUT when it fits in one chunk, else PATCH chunks then PUT.

        `read_chunk(offset, n)` returns the blob's bytes at offset (read in a worker thread).
        """
        scope = f"repository:{repo}:pull,push"
        loc = location or await self.start_upload(repo)

        def with_digest(url: str) -> str:
            return str(httpx.URL(url).copy_merge_params({"digest": digest}))

        if size <= chunk_size:
            data = await trio.to_thread.run_sync(read_chunk, 0, size)
            resp = await self.request(
                "PUT", with_digest(loc), scope=scope, content=data, headers={"Content-Type": "application/octet-stream"}
            )
            if resp.status_code not in (201, 204):
                raise self.fail(resp, f"upload of {digest}", "push", repo)
            if progress:
                progress(size)
            return
        offset = 0
        while offset < size:
            n = min(chunk_size, size - offset)
            data = await trio.to_thread.run_sync(read_chunk, offset, n)
            resp = await self.request(
                "PATCH",
                loc,
                scope=scope,
                content=data,
                headers={"Content-Type": "application/octet-stream", "Content-Range": f"{offset}-{offset + n - 1}"},
            )
            if resp.status_code != 202:
                raise self.fail(resp, f"upload of {digest}", "push", repo)
            loc = self._location(resp)
            offset += n
            if progress:
                progress(n)
        resp = await self.request(
            "PUT", with_digest(loc), scope=scope, content=b"", headers={"Content-Type": "application/octet-stream"}
        )
        if resp.status_code not in (201, 204):
            raise self.fail(resp, f"upload of {digest}", "push", repo)

    async def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        """PUT a manifest under a tag (or digest); returns the digest the registry reports."""
        resp = await self.request(
            "PUT",
            f"/v2/{repo}/manifests/{ref}",
            scope=f"repository:{repo}:pull,push",
            content=data,
            headers={"Content-Type": media_type},
        )
        if resp.status_code not in (200, 201, 202):
            raise self.fail(resp, f"manifest {repo}:{ref}", "push", repo)
        return resp.headers.get("docker-content-digest") or dg.of_bytes(data)


def stream_unread(resp: httpx.Response) -> bool:
    try:
        resp.content  # noqa: B018
    except httpx.ResponseNotRead:
        return True
    return False
