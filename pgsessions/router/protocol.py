"""The Router protocol: what sessions and the operations over sessions need from a router.

This is the seam between WHAT is stored (sessions/, export/, retention/, analytics/,
monitoring/) and WHERE a statement runs (router/). :class:`~.session_router.SessionRouter`
implements it for one replicated cluster, whether its calls run on the loop that opened it
or on a loop thread of its own; a router over several clusters implements it too. Code
outside router/ is typed against :class:`Router`, never against a concrete router.

- A statement of one conversation is routed by its :class:`RouteKey` (tenant and session
  id): the key picks the cluster and keys the consistency token.
- A consistency token is an opaque string: only the router reads it (validates, compares,
  caps); sessions keep it and hand it on.
- Operations that span conversations (listing, migrations, export, usage reports, pruning,
  metrics) run on each of :meth:`Router.clusters`, one router per cluster reached.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:
    import psycopg
    from psycopg.abc import Params, Query

    from .config import RouterConfig
    from .counters import RouterObserver
    from .execution import Rows, Setups
    from .topology import Topology


class RouteKey(NamedTuple):
    """Which conversation a statement belongs to."""

    tenant: str | None
    session_id: str


#: what a statement's key may be: a RouteKey, a bare session id (no tenant), or None for a
#: statement of no one conversation (it needs no session token and runs on any cluster)
KeyLike = RouteKey | str | None


def route_key(key: KeyLike) -> RouteKey | None:
    """``key`` as a :class:`RouteKey` (a bare session id has no tenant)."""
    if key is None or isinstance(key, RouteKey):
        return key
    return RouteKey(None, key)


class Router(Protocol):
    """What a PostgresSession and the operations over sessions use of a router."""

    @property
    def config(self) -> RouterConfig:
        """The settings statements are written for (schema, session TTL, ...)."""
        ...

    @property
    def closed(self) -> bool: ...

    async def execute_write(
        self,
        operation: str,
        key: KeyLike,
        query: Query,
        params: Params | None = None,
        *,
        commits: bool = False,
        setup: Setups | None = None,
        retry_params: Params | None = None,
        batch_query: Query | None = None,
        fenced_query: Query | None = None,
    ) -> tuple[Rows, str]:
        """Run one idempotent statement where ``key``'s conversation is written; returns its
        rows and the consistency token after it (also remembered for ``key``).

        ``batch_query``: for a ``commits=True`` statement, the same write (same ``params``)
        in a form that does not commit, so that it may share a transaction with others.
        ``fenced_query``: the same statement taking the router's fence (bucket and epoch)
        as its first two parameters; a router that fences writes runs it instead, with
        those two before ``params``; a router over one cluster ignores it."""
        ...

    async def execute_read(
        self,
        operation: str,
        key: KeyLike,
        query: Query,
        params: Params | None = None,
        *,
        token: str | None = None,
        setup: Setups | None = None,
        replay_column: bool = False,
    ) -> Rows:
        """Run one read-only statement where it sees ``key``'s writes and ``token``."""
        ...

    def primary_connection(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        """An autocommit connection to the primary for admin work (one cluster's router)."""
        ...

    def token_for(self, key: KeyLike) -> str | None:
        """The newest token this router holds for ``key``."""
        ...

    def remember_token(self, key: KeyLike, token: str | None) -> None:
        """Keep ``token`` for ``key``; ValueError naming it unless it is a token."""
        ...

    def forget_token(self, key: KeyLike) -> None: ...

    def newest_token(self, *tokens: str | None) -> str | None:
        """The newest of ``tokens`` (None when all are None); ValueError for a non-token."""
        ...

    def clusters(self) -> Sequence[Router]:
        """One router per cluster this router reaches (a SessionRouter: itself)."""
        ...

    def cluster_for(self, key: KeyLike) -> Router:
        """The router of the cluster that holds ``key``'s conversation (for admin work on
        one conversation, e.g. an import)."""
        ...

    def topology(self) -> Topology: ...

    def stats(self) -> dict[str, Any]: ...

    def pool_stats(self) -> dict[str, dict[str, int]]: ...

    def add_observer(self, observer: RouterObserver) -> None: ...

    def remove_observer(self, observer: RouterObserver) -> None: ...


@runtime_checkable
class SetsUpAfterMigrate(Protocol):
    """A router with work of its own once every cluster is migrated (a ShardedRouter
    spreads the buckets of a fresh set-up); :func:`pgsessions.migrate` calls it."""

    async def after_migrate(self) -> None: ...


def owned_buckets(router: Router, cluster: Router) -> list[int] | None:
    """The buckets ``router``'s directory gives ``cluster`` (one of its clusters), so that a
    statement over a shard's conversations skips what a move left on an old owner; None
    for a router over one cluster, or before a sharded set-up is made."""
    owned_by = getattr(router, "owned_by", None)
    return None if owned_by is None or len(router.clusters()) < 2 else owned_by(cluster)
