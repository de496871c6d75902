"""Every error pgsessions raises of its own (psycopg's errors pass through unchanged).

- :class:`RouterError` and its subclasses: where a statement could not run (no primary, split
  brain, overload, a closed router, ...);
- :class:`ShardError`, :class:`DirectoryError`, :class:`BucketMovedError`: a sharded set-up
  (ShardedRouter) is misconfigured, or a bucket's owner could not be found;
- :class:`TenantError`: tenant isolation refused a call;
- :class:`ExportFormatError`: a line of an export file is malformed.
"""

from __future__ import annotations

from collections.abc import Mapping


class RouterError(Exception):
    """Base class of the router's own errors."""


class NoPrimaryError(RouterError):
    """No writable host was found within ``failover_timeout``.

    ``hosts`` maps each host (``host:port``, never credentials) to what it answered.
    """

    def __init__(self, message: str, hosts: Mapping[str, str] | None = None) -> None:
        self.hosts = dict(hosts or {})
        detail = "; ".join(f"{h}: {s}" for h, s in self.hosts.items())
        super().__init__(f"{message} ({detail})" if detail else message)


class NoEligibleReplicaError(RouterError):
    """No replica may serve the read and ``no_replica_policy="error"`` forbids the primary."""

    def __init__(self, message: str, hosts: Mapping[str, str] | None = None) -> None:
        self.hosts = dict(hosts or {})
        detail = "; ".join(f"{h}: {s}" for h, s in self.hosts.items())
        super().__init__(f"{message} ({detail})" if detail else message)


class SplitBrainError(RouterError):
    """More than one host accepts writes: writes are refused until one is gone or demoted."""

    def __init__(self, primaries: list[str]) -> None:
        self.primaries = list(primaries)
        super().__init__(
            "split brain: more than one writable host "
            f"({', '.join(self.primaries)}); refusing writes until only one remains"
        )


class RouterClosedError(RouterError):
    """The router is not open."""


class OverloadedError(RouterError):
    """A healthy host could not take the request now: its pool gave no connection within
    ``pool_timeout``, ``pool_max_waiting`` requests were already queued, or the server
    answered SQLSTATE class 53 (insufficient resources).

    Nothing was written: the statement never ran, or ran and rolled back. The host is not
    banned and no failover starts; the caller may retry later (writes carry operation ids,
    so a retry is applied once). ``host`` is ``host:port``.
    """

    def __init__(self, message: str, host: str) -> None:
        self.host = host
        super().__init__(f"{host}: {message}")


class PreparedStatementsError(RouterError):
    """A server-side prepared statement was lost or mixed up between clients: a connection
    pooler (PgBouncer < 1.21 in transaction mode) sits between the router and PostgreSQL.

    Turn them off: ``RouterConfig(prepared_statements="off")``, ``prepared_statements=off``
    in the DSN, or ``PGSESSIONS_PREPARED_STATEMENTS=off``. The psycopg error is the cause.
    """

    def __init__(self, host: str, detail: str) -> None:
        self.host = host
        super().__init__(
            f"{host}: server-side prepared statements do not survive here ({detail}): a "
            "connection pooler in transaction mode (PgBouncer before 1.21) is between the "
            "router and PostgreSQL. Set prepared_statements='off' (RouterConfig, "
            "prepared_statements=off in the DSN, or PGSESSIONS_PREPARED_STATEMENTS=off)"
        )


class MissingPrivilegeError(RouterError):
    """The router's role lacks a privilege the router needs (``pg_monitor``, checked at open).

    The message names the role, the hosts and the GRANT that fixes it; ``roles`` lists the
    roles concerned.
    """

    def __init__(self, message: str, roles: list[str]) -> None:
        self.roles = list(roles)
        super().__init__(message)


# shards -----------------------------------------------------------------------------
class ShardError(RouterError):
    """One shard of a ShardedRouter cannot serve: unreachable at open, the same cluster as
    another shard, set up under another name or bucket count, or not set up. ``shard`` is
    the name in the router's configuration."""

    def __init__(self, shard: str, message: str) -> None:
        self.shard = shard
        super().__init__(f"shard {shard!r}: {message}")


class DirectoryError(RouterError):
    """The shards' directory disagrees with itself: a bucket claimed by two shards, or
    owned by none of the shards this router reaches. ``buckets`` lists those concerned."""

    def __init__(self, message: str, buckets: list[int]) -> None:
        self.buckets = list(buckets)
        super().__init__(message)


class BucketMovedError(RouterError):
    """A shard refused a statement on a bucket it does not own at the router's epoch
    (SQLSTATE ``PGS01``, see :data:`MOVED_SQLSTATE`) and no owner took it within
    ``failover_timeout``. Nothing was written. The refusal is the cause."""

    def __init__(self, message: str, shard: str, bucket: int) -> None:
        self.shard = shard
        self.bucket = bucket
        super().__init__(message)


#: the SQLSTATE a shard raises when it does not own a statement's bucket (migration 0011)
MOVED_SQLSTATE = "PGS01"


# sessions ---------------------------------------------------------------------------
class TenantError(Exception):
    """Tenant isolation refused the call, and nothing was written: a tenant was given but the
    schema does not enforce isolation (off, or bypassed by a superuser or BYPASSRLS role),
    isolation is on and no tenant was given, or ``resolve_tenant`` answered a tenant other
    than the session's. When the database refused, its error is the cause."""


class TenantConflictError(TenantError):
    """The session id already belongs to another tenant. Session ids are unique across
    tenants; nothing of the other tenant's session was read, changed or returned, and
    nothing was written."""

    def __init__(self, session_id: str, tenant: str | None) -> None:
        self.session_id = session_id
        self.tenant = tenant
        super().__init__(
            f"session id {session_id!r} belongs to another tenant than {tenant!r} (session ids "
            "are unique across tenants): nothing was written"
        )


# export -----------------------------------------------------------------------------
class ExportFormatError(ValueError):
    """A line of an export file is not what the format says (names the line number)."""
