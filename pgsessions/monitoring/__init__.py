"""Prometheus metrics for pgsessions, and the /metrics + /healthz endpoint.

``instrument(router)`` attaches the observer; ``serve(router)`` serves ``/metrics`` and
``/healthz`` from a thread; ``metrics_app(router)`` is the same as an ASGI app.
"""

from .asgi import metrics_app
from .collector import REGISTRY, instrument, move_watch, uninstrument
from .metrics import METRICS, MetricSpec, RouterMetrics
from .moves import MoveWatch
from .server import MetricsServer, serve

__all__ = [
    "METRICS",
    "REGISTRY",
    "MetricSpec",
    "MetricsServer",
    "MoveWatch",
    "RouterMetrics",
    "instrument",
    "metrics_app",
    "move_watch",
    "serve",
    "uninstrument",
]
