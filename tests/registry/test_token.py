"""The bearer-token flow against a registry with `auth: token` and a token issuer run by the tests."""

from __future__ import annotations

from pathlib import Path

from store.store import Store
from tests.helpers import strata

from .conftest import TokenRegistry


def test_anonymous_token_pull(token_registry: TokenRegistry, root: Path) -> None:
    issuer = token_registry.issuer
    before = len(issuer.requests)  # type: ignore[attr-defined]
    strata(root, "pull", f"{token_registry.host}/layered")
    rec = Store(root).resolve(f"{token_registry.host}/layered")
    assert rec.manifest == token_registry.digests["layered:latest"]
    seen = issuer.requests[before:]  # type: ignore[attr-defined]
    assert seen and all(r["user"] is None for r in seen)
    assert ["repository:layered:pull"] in [r["scopes"] for r in seen]
    assert all(r["service"] == ["strata-test"] for r in seen)
    assert len(seen) <= 2  # one token per scope, cached across the parallel blob downloads


def test_anonymous_push_is_denied_then_login_pushes(token_registry: TokenRegistry, root: Path) -> None:
    host = token_registry.host
    strata(root, "pull", f"{host}/tiny")
    strata(root, "tag", f"{host}/tiny", f"{host}/tokenpush/tiny:v1")
    proc = strata(root, "push", f"{host}/tokenpush/tiny:v1", check=False)
    assert proc.returncode == 1
    assert proc.stderr.decode().strip() == "Error: denied: requested access to the resource is denied"
    bad = strata(root, "login", "-u", "alice", "--password-stdin", host, input=b"bad", check=False)
    assert bad.returncode == 1
    assert bad.stderr.decode().strip() == f"Error: {host}: unauthorized: incorrect username or password"
    strata(root, "login", "-u", "alice", "--password-stdin", host, input=b"s3cret")
    before = len(token_registry.issuer.requests)  # type: ignore[attr-defined]
    out = strata(root, "push", f"{host}/tokenpush/tiny:v1").stdout.decode()
    assert "43b02861c89a: Mounted from tiny" in out
    scopes = [r.get("scopes") for r in token_registry.issuer.requests[before:]]  # type: ignore[attr-defined]
    assert ["repository:tokenpush/tiny:pull,push", "repository:tiny:pull"] in scopes
    assert all(r["user"] == "alice" for r in token_registry.issuer.requests[before:])  # type: ignore[attr-defined]
