"""A real HTTP proxy in front of the test registry that injects faults: 5xx, 429, dropped bodies.

Not a mock: every request that is not sabotaged goes to the real registry and back unchanged.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_lock = threading.Lock()


@dataclass
class Fault:
    """Sabotage the first `times` requests whose `METHOD path` contains `match`."""

    match: str
    action: str  # "503", "500", "429", "drop" (close mid-body), "drop-early" (close before answering)
    times: int = 1
    retry_after: str = "1"
    hits: int = 0


@dataclass
class FaultProxy:
    upstream: str  # host:port
    faults: list[Fault] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    rate: float = 0.0  # bytes per second per response body (0: unthrottled)
    delay: float = 0.0  # seconds each blob GET is held before it is answered
    in_flight: int = 0  # blob GETs being answered right now
    max_in_flight: int = 0

    def start(self) -> str:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                line = f"{self.command} {self.path}"
                if self.headers.get("Range"):
                    line += f" range={self.headers['Range']}"
                proxy.log.append(line)
                if "/blobs/" in line and self.command == "GET":
                    with _lock:
                        proxy.in_flight += 1
                        proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                    try:
                        time.sleep(proxy.delay)
                        self._answer(line, body, length)
                    finally:
                        with _lock:
                            proxy.in_flight -= 1
                    return
                self._answer(line, body, length)

            def _answer(self, line: str, body: bytes, length: int) -> None:
                fault = next((f for f in proxy.faults if f.match in line and f.hits < f.times), None)
                if fault:
                    fault.hits += 1
                    if fault.action == "drop-early":
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                        return
                    if fault.action in ("503", "500", "429"):
                        payload = b'{"errors":[{"code":"UNAVAILABLE","message":"injected fault"}]}'
                        self.send_response(int(fault.action))
                        if fault.action == "429":
                            self.send_header("Retry-After", fault.retry_after)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(payload)))
                        self.end_headers()
                        self.wfile.write(payload)
                        return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for k, v in self.headers.items():  # repeated headers (Accept) stay repeated
                    if k.lower() != "content-length":
                        conn.putheader(k, v)
                if body or length or self.command in ("PUT", "POST", "PATCH"):
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if fault and fault.action == "drop" and len(data) > 1:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if self.command != "HEAD":
                    if proxy.rate:
                        for off in range(0, len(data), 65536):
                            self.wfile.write(data[off : off + 65536])
                            time.sleep(min(65536, len(data) - off) / proxy.rate)
                    else:
                        self.wfile.write(data)
                conn.close()

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return f"127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
