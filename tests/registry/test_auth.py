"""Basic auth (htpasswd), login/logout and config.json, credential helpers, and TLS."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import trio

from store.registry.client import Registry
from store.store import Store
from tests.helpers import strata

from .conftest import RegistryInfo


def config(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "docker-config" / "config.json").read_text())


def denied(host: str, repo: str) -> str:
    return (
        f"Error: pull access denied for {host}/{repo}, repository does not exist or may require "
        f"'strata login {host}': denied: requested access to the resource is denied"
    )


def test_login_pull_push_logout(auth_registry: RegistryInfo, root: Path, tmp_path: Path) -> None:
    host = auth_registry.host
    proc = strata(root, "pull", f"{host}/tiny", check=False)
    assert proc.returncode == 1 and proc.stderr.decode().strip() == denied(host, "tiny")

    bad = strata(root, "login", "-u", "alice", "--password-stdin", host, input=b"wrong\n", check=False)
    assert bad.returncode == 1
    assert bad.stderr.decode().strip() == f"Error: login to {host} failed: unauthorized: incorrect username or password"
    assert not (tmp_path / "docker-config" / "config.json").exists()

    ok = strata(root, "login", "-u", "alice", "--password-stdin", host, input=b"s3cret\n")
    assert ok.stdout.decode().strip() == "Login Succeeded"
    path = tmp_path / "docker-config" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert config(tmp_path)["auths"][host] == {"auth": base64.b64encode(b"alice:s3cret").decode()}

    strata(root, "pull", f"{host}/layered")
    assert Store(root).resolve(f"{host}/layered").manifest == auth_registry.digests["layered:latest"]
    strata(root, "tag", f"{host}/layered", f"{host}/authpush/layered:v1")
    pushed = strata(root, "push", f"{host}/authpush/layered:v1").stdout.decode()
    assert pushed.count("Mounted from layered") == 5

    assert strata(root, "logout", host).stdout.decode().strip() == f"Removing login credentials for {host}"
    assert host not in config(tmp_path).get("auths", {})
    assert strata(root, "logout", host).stdout.decode().strip() == f"Not logged in to {host}"
    proc = strata(tmp_path / "other", "pull", f"{host}/tiny", check=False)
    assert proc.stderr.decode().strip() == denied(host, "tiny")


def test_wrong_stored_password_fails_cleanly(auth_registry: RegistryInfo, root: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "docker-config"
    cfg.mkdir()
    (cfg / "config.json").write_text(
        json.dumps({"auths": {f"http://{auth_registry.host}": {"auth": base64.b64encode(b"alice:nope").decode()}}})
    )
    proc = strata(root, "pull", f"{auth_registry.host}/tiny", check=False)
    assert proc.returncode == 1
    assert proc.stderr.decode().strip() == (
        f"Error: {auth_registry.host}: unauthorized: incorrect username or password"
    )
    push = strata(root, "push", f"{auth_registry.host}/x:y", check=False)
    assert push.returncode == 1 and "No such image" in push.stderr.decode()


def test_password_flag_and_prompt_rules(auth_registry: RegistryInfo, root: Path) -> None:
    proc = strata(
        root,
        "login",
        "-p",
        "s3cret",
        "--password-stdin",
        "-u",
        "alice",
        auth_registry.host,
        input=b"s3cret\n",
        check=False,
    )
    assert proc.returncode == 1 and "mutually exclusive" in proc.stderr.decode()
    proc = strata(root, "login", "-u", "alice", "-p", "s3cret", auth_registry.host)
    assert "Login Succeeded" in proc.stdout.decode()
    assert "--password-stdin" in proc.stderr.decode()


HELPER = """#!/usr/bin/env python3
import json, os, sys
db = os.environ["FAKE_HELPER_DB"]
data = json.load(open(db)) if os.path.exists(db) else {}
action = sys.argv[1]
payload = sys.stdin.read()
if action == "store":
    req = json.loads(payload)
    data[req["ServerURL"]] = [req["Username"], req["Secret"]]
elif action == "get":
    if payload.strip() not in data:
        print("credentials not found in native keychain"); sys.exit(1)
    user, secret = data[payload.strip()]
    print(json.dumps({"ServerURL": payload.strip(), "Username": user, "Secret": secret})); sys.exit(0)
elif action == "erase":
    data.pop(payload.strip(), None)
json.dump(data, open(db, "w"))
"""


def test_credential_helper(
    auth_registry: RegistryInfo, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-fake"
    helper.write_text(HELPER)
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_HELPER_DB", str(tmp_path / "helper.json"))
    cfg = tmp_path / "docker-config"
    cfg.mkdir()
    (cfg / "config.json").write_text(json.dumps({"credsStore": "fake"}))
    strata(root, "login", "-u", "alice", "--password-stdin", auth_registry.host, input=b"s3cret")
    stored = json.loads((tmp_path / "helper.json").read_text())
    assert stored == {auth_registry.host: ["alice", "s3cret"]}
    assert "auth" not in json.dumps(config(tmp_path).get("auths", {}))
    strata(root, "pull", f"{auth_registry.host}/tiny")
    strata(root, "logout", auth_registry.host)
    assert json.loads((tmp_path / "helper.json").read_text()) == {}
    # a per-registry helper (credHelpers) wins over credsStore; a missing helper binary is ignored
    (cfg / "config.json").write_text(json.dumps({"credsStore": "absent", "credHelpers": {auth_registry.host: "fake"}}))
    (tmp_path / "helper.json").write_text(json.dumps({auth_registry.host: ["alice", "s3cret"]}))
    strata(root, "pull", f"{auth_registry.host}/layered")
    (cfg / "config.json").write_text(json.dumps({"credsStore": "absent"}))
    proc = strata(tmp_path / "other", "pull", f"{auth_registry.host}/tiny", check=False)
    assert proc.returncode == 1 and "pull access denied" in proc.stderr.decode()


def test_tls_registry_with_ca_in_certs_d(tls_registry: RegistryInfo, root: Path, tmp_path: Path) -> None:
    host = tls_registry.host
    certs = tmp_path / "certs.d" / host
    certs.mkdir(parents=True)
    shutil.copy(tls_registry.state / "tls" / "ca.crt", certs / "ca.crt")
    strata(root, "login", "-u", "alice", "--password-stdin", host, input=b"s3cret\n")
    strata(root, "pull", f"{host}/tiny")
    assert Store(root).resolve(f"{host}/tiny").manifest == tls_registry.digests["tiny:latest"]
    assert "GET /v2/tiny/manifests/latest HTTP/" in tls_registry.log.read_text()

    async def endpoint() -> tuple[str | None, bool | None]:
        async with Registry(host) as reg:
            await reg.connect()
            return reg.base, reg.tls_verified

    assert trio.run(endpoint) == (f"https://{host}", True)
    shutil.rmtree(certs)  # loopback without the CA: Docker's rule allows unverified TLS
    assert trio.run(endpoint) == (f"https://{host}", False)
