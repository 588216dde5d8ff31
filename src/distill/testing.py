"""Test equipment: imported by tests and benchmarks, never by the library itself.

- `FaultProxy`: a fault-injecting HTTP proxy, to test how an API client copes
  with a bad endpoint;
- `launch`: `distill serve` in its own process on a free loopback port;
- `BackgroundServer`: an ASGI app served by uvicorn from a thread;
- `free_port`.

The proxy:

    with FaultProxy("http://127.0.0.1:8000", rate=0.3) as url:   # url: the proxy
        ...point the client at url...
    proxy.injected   # Counter: faults injected by kind
    proxy.forwarded  # Counter: upstream answers (by status) to requests on `paths`

Each request to a path in `paths` is, with probability `rate` (a seeded stream of
draws), answered with a fault instead of being forwarded:

* `rate_limited`: 429 with `Retry-After`;
* `server_error`: 500;
* `slow`: no answer for `slow_s` seconds (set it past the client's timeout), then
  the connection is closed;
* `drop`: the connection is closed at once, with no answer.

Everything else is forwarded to `upstream` unchanged. Standard library only.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("rate_limited", "server_error", "slow", "drop")
FORWARDED_HEADERS = ("content-type", "authorization", "accept")


class FaultProxy:
    def __init__(self, upstream: str, rate: float, kinds: tuple[str, ...] = FAULTS,
                 seed: int = 0, slow_s: float = 2.0, retry_after_s: float = 0.1,
                 paths: tuple[str, ...] = ("/v1/chat/completions", "/v1/completions")):
        unknown = set(kinds) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULTS}")
        target = urlsplit(upstream)
        self.upstream = (target.hostname, target.port or 80)
        self.rate, self.kinds, self.paths = rate, kinds, paths
        self.slow_s, self.retry_after_s = slow_s, retry_after_s
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.injected: collections.Counter = collections.Counter()
        # answers the upstream gave to requests on `paths`, by status
        self.forwarded: collections.Counter = collections.Counter()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.url

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def draw(self, path: str) -> str | None:
        """The fault for this request, or None to forward it."""
        if path.split("?")[0] not in self.paths:
            return None
        with self.lock:
            if self.rng.random() >= self.rate:
                return None
            kind = self.rng.choice(self.kinds)
            self.injected[kind] += 1
            return kind

    def forward(self, method: str, path: str, headers, body: bytes) -> tuple[int, str, bytes]:
        connection = http.client.HTTPConnection(*self.upstream, timeout=600)
        try:
            connection.request(method, path, body=body or None,
                               headers={k: v for k, v in headers.items()
                                        if k.lower() in FORWARDED_HEADERS})
            response = connection.getresponse()
            payload = response.read()
            if path.split("?")[0] in self.paths:
                with self.lock:
                    self.forwarded[response.status] += 1
            return response.status, response.getheader("content-type", "application/json"), \
                payload
        finally:
            connection.close()


def _handler(proxy: FaultProxy):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self._handle("GET")

        def do_POST(self):
            self._handle("POST")

        def log_message(self, *args):  # quiet: tests and benchmarks print their own
            pass

        def _handle(self, method: str):
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            fault = proxy.draw(self.path)
            if fault == "rate_limited":
                self._reply(429, {"error": {"message": "Rate limit reached (injected)",
                                            "type": "rate_limit_error"}},
                            {"Retry-After": f"{proxy.retry_after_s:g}"})
            elif fault == "server_error":
                self._reply(500, {"error": {"message": "Internal error (injected)",
                                            "type": "server_error"}})
            elif fault in ("slow", "drop"):
                if fault == "slow":
                    time.sleep(proxy.slow_s)
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
            else:
                status, content_type, payload = proxy.forward(method, self.path, self.headers,
                                                              body)
                self._send(status, content_type, payload, {})

        def _reply(self, status: int, content: dict, headers: dict | None = None):
            self._send(status, "application/json", json.dumps(content).encode(), headers or {})

        def _send(self, status: int, content_type: str, payload: bytes, headers: dict):
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
            except OSError:  # the client gave up (its timeout); nothing to tell it
                self.close_connection = True

    return Handler


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (for a server started right after)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def launch(model: str, *options: str, env: dict | None = None, output=None,
           timeout_s: float = 180.0) -> tuple[subprocess.Popen, str]:
    """Start `distill serve MODEL OPTIONS...` in its own process on a free loopback port
    and wait until it answers /health. Returns (process, base URL without /v1); the
    caller terminates the process. `output`: a file for its stdout and stderr."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "distill.cli", "serve", model, "--port", str(port), *options],
        env=env, stdout=output, stderr=subprocess.STDOUT if output else None)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            return process, url
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"distill serve {model} did not start on {url}") from None
            time.sleep(0.5)


class BackgroundServer:
    """Serve an ASGI app with uvicorn from a thread, on a free loopback port:
    `with BackgroundServer(app) as base_url: ...` (tests, benchmarks, notebooks)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.port = self.socket.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run,
                                       kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        with contextlib.suppress(OSError):
            self.socket.close()
