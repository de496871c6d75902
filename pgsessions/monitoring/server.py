"""``serve()``: /metrics and /healthz over HTTP (or HTTPS) from a background thread,
optionally behind HTTP basic auth."""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import ssl
import sys
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from .endpoint import JSON, Endpoint

if TYPE_CHECKING:
    from ..router.protocol import Router

log = logging.getLogger(__name__)

#: a client that neither finishes its TLS handshake nor sends a request is dropped after this
CLIENT_TIMEOUT = 30.0
REALM = "pgsessions metrics"


def basic_auth_header(user: str, password: str) -> str:
    """The ``Authorization`` value a scraper sends (``Basic base64(user:password)``)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def credentials_match(header: str | None, expected: bytes) -> bool:
    """Whether an ``Authorization`` header carries ``expected`` (``user:password``),
    compared in constant time."""
    if not header or header[:6].lower() != "basic ":
        return False
    try:
        given = base64.b64decode(header[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(given, expected)


def server_tls_context(
    certfile: str | os.PathLike[str], keyfile: str | os.PathLike[str] | None = None
) -> ssl.SSLContext:
    """A TLS 1.2+ server context with ``certfile`` (and ``keyfile``, if the key is apart)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


class _Handler(BaseHTTPRequestHandler):
    endpoint: Endpoint  # set on the per-server subclass
    #: ``user:password`` when basic auth is required
    credentials: bytes | None = None
    protocol_version = "HTTP/1.1"
    timeout = CLIENT_TIMEOUT

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            # the handshake runs here, in the request's thread, not in the accept loop:
            # a slow or plain-text client cannot stall the server
            self.request.settimeout(self.timeout)
            self.request.do_handshake()
        super().setup()

    def do_GET(self) -> None:
        if self.credentials is not None and not credentials_match(
            self.headers.get("Authorization"), self.credentials
        ):
            self._send(
                401,
                b"authentication required\n",
                [
                    ("Content-Type", "text/plain"),
                    ("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"'),
                ],
            )
            return
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a failed TLS handshake (plain HTTP, a client that distrusts the certificate) or a
        # client gone away is the client's business: no traceback on stderr at every scrape
        exc = sys.exc_info()[1]
        client_side = isinstance(exc, ssl.SSLError | ConnectionError | TimeoutError)
        log.log(
            logging.DEBUG if client_side else logging.WARNING,
            "pgsessions metrics: request from %s failed",
            client_address,
            exc_info=True,
        )


class MetricsServer:
    """A running endpoint. ``stop()`` (or leaving ``with``) shuts it down and frees the port.

    With ``tls`` (an ``ssl.SSLContext``) it serves HTTPS only; with ``basic_auth``
    (``(user, password)``) every request needs those credentials, else 401.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        basic_auth: tuple[str, str] | None = None,
    ) -> None:
        attrs: dict[str, Any] = {"endpoint": endpoint}
        if basic_auth is not None:
            user, password = basic_auth
            if not user or ":" in user or not password:
                raise ValueError("basic_auth: a user without ':' and a non-empty password")
            attrs["credentials"] = f"{user}:{password}".encode()
        handler = type("Handler", (_Handler,), attrs)
        self.endpoint = endpoint
        self.tls = tls is not None
        self._httpd = _Server((host, port), handler)
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(
                self._httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name=f"pgsessions-metrics:{self.port}", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

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
    router: Router | Sequence[Router] | None,
    host: str = "127.0.0.1",
    port: int = 9464,
    *,
    registry: CollectorRegistry | None = None,
    certfile: str | os.PathLike[str] | None = None,
    keyfile: str | os.PathLike[str] | None = None,
    basic_auth: tuple[str, str] | None = None,
) -> MetricsServer:
    """Serve ``/metrics`` and ``/healthz`` for ``router`` (or several) on ``host:port``.

    The router is instrumented if it is not yet. ``port=0`` picks a free port (see
    ``.port``). Scrapes run in their own threads: a busy event loop does not delay them.
    ``certfile`` (PEM, with ``keyfile`` unless it holds the key) serves HTTPS only;
    ``basic_auth=(user, password)`` answers 401 to any request without those credentials.
    """
    if keyfile is not None and certfile is None:
        raise ValueError("keyfile without certfile: give the certificate too")
    tls = server_tls_context(certfile, keyfile) if certfile is not None else None
    return MetricsServer(Endpoint(router, registry), host, port, tls=tls, basic_auth=basic_auth)
