"""``metrics_app()``: /metrics and /healthz as a plain ASGI app (mount it in Starlette/FastAPI)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from .endpoint import JSON, Endpoint

if TYPE_CHECKING:
    from ..router.protocol import Router

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def metrics_app(
    router: Router | Sequence[Router] | None = None,
    *,
    registry: CollectorRegistry | None = None,
) -> ASGIApp:
    """An ASGI app answering ``/metrics`` and ``/healthz`` (also under a mount prefix).

    ``app.mount("/ops", metrics_app(router))`` serves ``/ops/metrics`` and ``/ops/healthz``.
    """
    endpoint = Endpoint(router, registry)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = str(scope.get("path", ""))
        root = str(scope.get("root_path", ""))
        if root and path.startswith(root):
            path = path[len(root) :]
        path = path.rstrip("/") or "/"
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if scope.get("method") not in ("GET", "HEAD"):
            status, body, hdrs = 405, b"method not allowed\n", [("Content-Type", "text/plain")]
        elif path == "/metrics":
            body, hdrs = endpoint.metrics(
                headers.get("accept", ""), headers.get("accept-encoding", "")
            )
            status = 200
        elif path == "/healthz":
            status, body = endpoint.health()
            hdrs = [("Content-Type", JSON)]
        else:
            status, body = 404, b"not found: try /metrics or /healthz\n"
            hdrs = [("Content-Type", "text/plain")]
        hdrs = [*hdrs, ("Content-Length", str(len(body))), ("Cache-Control", "no-store")]
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.lower().encode(), v.encode()) for k, v in hdrs],
            }
        )
        await send(
            {"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body}
        )

    return app
