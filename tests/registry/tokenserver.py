"""A tiny bearer-token issuer (Distribution token auth) and a registry configured to trust it.

Tokens are RS256 JWTs signed with `openssl dgst` by a self-signed key whose certificate is the
registry's `rootcertbundle` and travels in the JWT `x5c` header. Anonymous users get `pull`;
alice / s3cret gets `pull,push`; wrong credentials get 401.
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.conftest import free_port

SERVICE = "strata-test"
ISSUER = "strata-test-issuer"
USERS = {"alice": "s3cret"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenServer:
    workdir: Path
    requests: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.key = self.workdir / "key.pem"
        self.cert = self.workdir / "cert.pem"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                str(self.key),
                "-out",
                str(self.cert),
                "-days",
                "2",
                "-subj",
                "/CN=strata-test-token-issuer",
            ],
            check=True,
            capture_output=True,
        )
        der = subprocess.run(
            ["openssl", "x509", "-in", str(self.cert), "-outform", "DER"], check=True, capture_output=True
        ).stdout
        self.x5c = base64.b64encode(der).decode()

    def sign(self, claims: dict) -> str:
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        sig = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            check=True,
            capture_output=True,
        ).stdout
        return f"{signing_input}.{b64url(sig)}"

    def token(self, user: str | None, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            allowed = {"pull", "push"} if user else {"pull"}
            granted = [a for a in actions.split(",") if a in allowed]
            if kind == "repository" and granted:
                access.append({"type": "repository", "name": name, "actions": granted})
        now = int(time.time())
        return self.sign(
            {
                "iss": ISSUER,
                "sub": user or "",
                "aud": SERVICE,
                "exp": now + 300,
                "nbf": now - 10,
                "iat": now,
                "jti": f"{now}-{len(self.requests)}",
                "access": access,
            }
        )

    def start(self) -> str:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                url = urllib.parse.urlparse(self.path)
                query = urllib.parse.parse_qs(url.query)
                user = None
                authz = self.headers.get("Authorization", "")
                if authz.startswith("Basic "):
                    name, _, password = base64.b64decode(authz[6:]).decode().partition(":")
                    if USERS.get(name) != password:
                        self.send_response(401)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        server.requests.append({"user": name, "denied": True})
                        return
                    user = name
                scopes = query.get("scope", [])
                server.requests.append({"user": user, "scopes": scopes, "service": query.get("service")})
                body = json.dumps({"token": server.token(user, scopes), "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_token_registry(workdir: Path, storage: Path, realm: str, cert: Path) -> tuple[subprocess.Popen, str]:
    """Run /usr/bin/docker-registry with `auth: token` on a free port; return (process, host)."""
    port = free_port()
    config = workdir / "config.yml"
    config.write_text(f"""version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: token-registry-secret
validation:
  manifests:
    urls:
      allow:
        - ^https://
auth:
  token:
    realm: {realm}
    service: {SERVICE}
    issuer: {ISSUER}
    rootcertbundle: {cert}
""")
    log = open(workdir / "registry.log", "wb")
    proc = subprocess.Popen(["/usr/bin/docker-registry", "serve", str(config)], stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
        except urllib.error.HTTPError as e:
            if e.code == 401:
                return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"token registry did not start: {(workdir / 'registry.log').read_text()[-2000:]}")
