"""``serve()``: /metrics and /healthz over HTTP from a background thread."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from .endpoint import JSON, Endpoint

if TYPE_CHECKING:
    from ..router import SessionRouter


class _Handler(BaseHTTPRequestHandler):
    endpoint: Endpoint  # set on the per-server subclass
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if path == "/metrics":
            body, headers = self.endpoint.metrics(
                self.headers.get("Accept", ""), self.headers.get("Accept-Encoding", "")
            )
            self._send(200, body, headers)
        elif path == "/healthz":
            status, body = self.endpoint.health()
            self._send(status, body, [("Content-Type", JSON)])
        else:
            self._send(
                404, b"not found: try /metrics or /healthz\n", [("Content-Type", "text/plain")]
            )

    def do_HEAD(self) -> None:
        self.do_GET()

    def _send(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # scrapes every few seconds would flood stderr


class MetricsServer:
    """A running endpoint. ``stop()`` (or leaving ``with``) shuts it down and frees the port."""

    def __init__(self, endpoint: Endpoint, host: str, port: int) -> None:
        handler = type("Handler", (_Handler,), {"endpoint": endpoint})
        self.endpoint = endpoint
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name=f"pgsessions-metrics:{self.port}", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(5)
        self._httpd.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"MetricsServer({self.url})"


def serve(
    router: SessionRouter | Sequence[SessionRouter] | None,
    host: str = "127.0.0.1",
    port: int = 9464,
    *,
    registry: CollectorRegistry | None = None,
) -> MetricsServer:
    """Serve ``/metrics`` and ``/healthz`` for ``router`` (or several) on ``host:port``.

    The router is instrumented if it is not yet. ``port=0`` picks a free port (see
    ``.port``). Scrapes run in their own threads: a busy event loop does not delay them.
    """
    return MetricsServer(Endpoint(router, registry), host, port)
