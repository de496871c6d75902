"""What the router reports as it works: an observer interface that monitoring/ implements.

The router calls these hooks on the request path, so implementations must be cheap and
must never raise.
"""

from __future__ import annotations

from typing import Protocol


class RouterObserver(Protocol):
    def on_route(self, operation: str, role: str, reason: str) -> None:
        """A statement was sent to a node of ``role`` for ``reason`` (replica, token_ahead, ...)."""

    def on_operation(self, operation: str, role: str, seconds: float, error: str | None) -> None:
        """An operation finished (error is a short class name, or None on success)."""

    def on_retry(self, operation: str, reason: str) -> None:
        """An attempt failed with a retryable error and will be retried."""

    def on_pool_wait(self, host: str, role: str, seconds: float) -> None:
        """A connection was checked out of a pool after waiting ``seconds``."""

    def on_connection_lost(self, host: str, role: str) -> None:
        """A pooled connection was found broken."""

    def on_failover(self, seconds: float) -> None:
        """A new primary was found ``seconds`` after the old one was suspected."""

    def on_split_brain(self) -> None:
        """Writes were refused because more than one host is writable."""

    def on_token_capped(self) -> None:
        """A consistency token beyond the primary's position was capped at it."""

    def on_overload(self, operation: str, host: str, role: str) -> None:
        """A busy host refused a request (pool timeout, full queue or SQLSTATE class 53)."""
