"""RouterConfig: where the cluster is and how the router treats it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from .dsn import check_dsn, shown, split_hosts, strip_own_options
from .settings import INT64_MAX, MAX_CONNECTIONS, Range, count, non_negative, positive

NoReplicaPolicy = Literal["primary", "wait", "error"]
#: server-side prepared statements: ``auto`` prepares only on a connection that reaches
#: PostgreSQL directly (not through a pooler), ``on`` always (psycopg's default threshold),
#: ``off`` never (needed behind PgBouncer < 1.21 in transaction mode)
PreparedStatements = Literal["auto", "on", "off"]
PREPARED_STATEMENTS_MODES = ("auto", "on", "off")

#: operation ids are pruned after an hour (migration 0001's prune_ops): a write is never
#: retried for that long
OP_ID_RETENTION_SECONDS = 3600.0

#: every numeric setting of RouterConfig and what it may be (also ``PGSESSIONS_<NAME>``)
SETTINGS: dict[str, Range] = {
    "max_lag_bytes": count(0, INT64_MAX),
    "max_lag_seconds": positive(),
    "check_interval": positive(3600.0),
    "healthy_for": non_negative(),
    # a write retried after its operation id was pruned could be applied twice
    "failover_timeout": Range(float, 0, OP_ID_RETENTION_SECONDS, low_open=True, high_open=True),
    "catch_up_wait": non_negative(3600.0),
    "primary_pool_min": count(0, MAX_CONNECTIONS),
    "primary_pool_max": count(1, MAX_CONNECTIONS),
    "replica_pool_min": count(0, MAX_CONNECTIONS),
    "replica_pool_max": count(1, MAX_CONNECTIONS),
    "connect_timeout": positive(),
    "statement_timeout": positive(),
    "check_timeout": positive(3600.0),
    "pool_timeout": positive(),
    "pool_max_waiting": count(0),
    "token_cache_size": count(1),
    # up to about a century (None: forever)
    "session_ttl": positive(100 * 365 * 86_400.0),
}
#: pairs (minimum, maximum) that must be in order
ORDERED = (("primary_pool_min", "primary_pool_max"), ("replica_pool_min", "replica_pool_max"))


@dataclass(frozen=True)
class RouterConfig:
    """Settings of a :class:`SessionRouter`.

    ``hosts`` is a list of psycopg conninfo strings (one per server) or one string: a
    comma-separated list or a libpq multi-host URL. Roles are discovered from the servers.
    """

    hosts: list[str] | tuple[str, ...] | str = field(default_factory=list)
    max_lag_bytes: int = 16 * 2**20
    max_lag_seconds: float = 5.0
    check_interval: float = 0.5
    #: a replica must stay healthy this long before it returns to rotation
    healthy_for: float = 2.0
    failover_timeout: float = 30.0
    #: how long a read waits for a replica to reach the session's token before using the primary
    catch_up_wait: float = 0.05
    primary_pool_min: int = 2
    primary_pool_max: int = 10
    replica_pool_min: int = 1
    replica_pool_max: int = 10
    connect_timeout: float = 3.0
    statement_timeout: float = 10.0
    #: a host that does not answer a health check within this is down for that check
    check_timeout: float = 1.0
    #: longest wait for a pooled connection before the attempt counts as failed
    pool_timeout: float = 10.0
    #: requests that may queue for one host's pool; past it a request fails at once with
    #: OverloadedError (0: no bound)
    pool_max_waiting: int = 1000
    #: what a read does when no replica is eligible: read the primary, wait, or raise
    no_replica_policy: NoReplicaPolicy = "primary"
    #: read from replicas at all (False: every statement goes to the primary)
    read_from_replicas: bool = True
    #: sessions remembered per router for read-your-writes across PostgresSession objects
    token_cache_size: int = 100_000
    #: schema holding pgsessions' tables (used by sessions/, carried here for one config)
    schema: str = "pgsessions"
    #: default time-to-live of a conversation in seconds (None: forever): a session whose
    #: last write is older reads as empty (PostgresSession(ttl=...) overrides it)
    session_ttl: float | None = None
    name: str = "default"
    #: server-side prepared statements: auto, on or off (see PreparedStatements); a DSN may
    #: override it for its host with ``prepared_statements=off`` (removed before connecting)
    prepared_statements: PreparedStatements = "auto"
    #: Patroni REST API URLs (one per member, e.g. ``http://db1:8008``): a second opinion on
    #: which replicas may serve reads and when the leader moved (see router/patroni.py)
    patroni: list[str] | tuple[str, ...] | str = ()
    #: writes waiting at the same moment share one transaction and round trip (see README)
    coalesce_writes: bool = True
    #: replica reads starting at the same moment share one round trip (see README)
    coalesce_reads: bool = True
    _conninfos: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)
    _prepare_modes: dict[str, str] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        hosts = split_hosts(self.hosts)
        if not hosts:
            raise ValueError("RouterConfig.hosts is empty: give at least one PostgreSQL DSN")
        object.__setattr__(self, "hosts", tuple(hosts))
        self._check_prepared_statements(self.prepared_statements, "RouterConfig")
        conninfos: list[str] = []
        for i, dsn in enumerate(hosts):
            problem = check_dsn(dsn)
            if problem is not None:
                hint = ""
                if "prepare_threshold" in problem:
                    hint = (
                        " (prepare_threshold is a psycopg argument, not a DSN option: to turn "
                        "server-side prepared statements off, put prepared_statements=off in "
                        "the DSN, or use RouterConfig(prepared_statements='off') or "
                        "PGSESSIONS_PREPARED_STATEMENTS=off)"
                    )
                raise ValueError(
                    f"RouterConfig.hosts[{i}] is not a valid PostgreSQL DSN: {problem}{hint} "
                    f"(DSN: {shown(dsn)})"
                )
            conninfo, own = strip_own_options(dsn)
            mode = own.get("prepared_statements", self.prepared_statements)
            self._check_prepared_statements(mode, f"RouterConfig.hosts[{i}]")
            conninfos.append(conninfo)
            self._prepare_modes[conninfo] = mode
        object.__setattr__(self, "_conninfos", tuple(conninfos))
        self._check_patroni()
        for knob, rng in SETTINGS.items():
            value = getattr(self, knob)
            if not (knob == "session_ttl" and value is None):
                rng.check(f"RouterConfig.{knob}", value)
        for low, high in ORDERED:
            if getattr(self, low) > getattr(self, high):
                raise ValueError(
                    f"RouterConfig.{low} ({getattr(self, low)!r}) must be <= {high} "
                    f"({getattr(self, high)!r})"
                )
        if not isinstance(self.read_from_replicas, bool):
            raise ValueError(
                f"RouterConfig.read_from_replicas must be True or False, "
                f"got {self.read_from_replicas!r}"
            )
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"RouterConfig.name must be a non-empty string, got {self.name!r}")
        if self.no_replica_policy not in ("primary", "wait", "error"):
            raise ValueError(
                f"RouterConfig.no_replica_policy must be primary, wait or error, "
                f"got {self.no_replica_policy!r}"
            )
        if not isinstance(self.schema, str) or not self.schema.replace("_", "").isalnum():
            raise ValueError(f"RouterConfig.schema {self.schema!r} is not a plain identifier")

    @staticmethod
    def _check_prepared_statements(mode: str, where: str) -> None:
        if mode not in PREPARED_STATEMENTS_MODES:
            raise ValueError(f"{where}: prepared_statements must be auto, on or off, got {mode!r}")

    @property
    def host_list(self) -> tuple[str, ...]:
        """One conninfo per host, as psycopg gets it (pgsessions' own options removed)."""
        return self._conninfos

    def prepared_statements_for(self, conninfo: str) -> PreparedStatements:
        """The prepared-statement mode of one host (a DSN of :attr:`host_list`)."""
        mode = self._prepare_modes.get(conninfo, self.prepared_statements)
        return mode  # type: ignore[return-value]

    def _check_patroni(self) -> None:
        from .dsn import check_patroni_url

        raw = self.patroni
        urls = [u.strip() for u in raw.split(",")] if isinstance(raw, str) else list(raw)
        urls = [u for u in urls if u]
        for i, url in enumerate(urls):
            problem = check_patroni_url(url) if isinstance(url, str) else "not a string"
            if problem is not None:
                raise ValueError(f"RouterConfig.patroni[{i}]: {problem}")
        object.__setattr__(self, "patroni", tuple(urls))

    def __repr__(self) -> str:
        from .dsn import redact

        return (
            f"RouterConfig(hosts={[redact(h) for h in self.host_list]!r}, "
            f"max_lag_bytes={self.max_lag_bytes}, max_lag_seconds={self.max_lag_seconds}, "
            f"check_interval={self.check_interval}, failover_timeout={self.failover_timeout}, "
            f"schema={self.schema!r}, name={self.name!r}, "
            f"prepared_statements={self.prepared_statements!r}, patroni={list(self.patroni)!r})"
        )

    @classmethod
    def from_env(cls, **overrides: object) -> RouterConfig:
        """Build a config from ``PGSESSIONS_*`` environment variables.

        ``PGSESSIONS_HOSTS`` (required); every numeric setting as ``PGSESSIONS_<NAME>``
        (``PGSESSIONS_CHECK_INTERVAL``, ``PGSESSIONS_PRIMARY_POOL_MAX``, ...: see
        :data:`SETTINGS`, each checked against its range with a ValueError naming the
        variable), ``PGSESSIONS_SESSION_TTL`` (seconds), ``PGSESSIONS_READ_FROM_REPLICAS``
        (true/false), ``PGSESSIONS_SCHEMA``, ``PGSESSIONS_NO_REPLICA_POLICY``,
        ``PGSESSIONS_PREPARED_STATEMENTS`` (auto, on, off), ``PGSESSIONS_PATRONI``
        (comma-separated REST URLs), ``PGSESSIONS_COALESCE_WRITES`` and
        ``PGSESSIONS_COALESCE_READS`` (``off`` turns one off). Keyword arguments override
        the environment.
        """
        hosts = os.environ.get("PGSESSIONS_HOSTS", "")
        kw: dict[str, object] = {
            "hosts": hosts,
            "schema": os.environ.get("PGSESSIONS_SCHEMA") or cls.schema,
            "no_replica_policy": os.environ.get("PGSESSIONS_NO_REPLICA_POLICY")
            or cls.no_replica_policy,
            "prepared_statements": os.environ.get("PGSESSIONS_PREPARED_STATEMENTS")
            or cls.prepared_statements,
            "patroni": os.environ.get("PGSESSIONS_PATRONI", ""),
            "coalesce_writes": os.environ.get("PGSESSIONS_COALESCE_WRITES", "on") != "off",
            "coalesce_reads": os.environ.get("PGSESSIONS_COALESCE_READS", "on") != "off",
        }
        for knob, rng in SETTINGS.items():
            env = f"PGSESSIONS_{knob.upper()}"
            raw = os.environ.get(env, "").strip()
            if raw and knob not in overrides:
                kw[knob] = rng.parse(env, raw)
        raw = os.environ.get("PGSESSIONS_READ_FROM_REPLICAS", "").strip().lower()
        if raw:
            if raw not in _BOOLS:
                raise ValueError(
                    f"PGSESSIONS_READ_FROM_REPLICAS={raw!r} must be one of {', '.join(_BOOLS)}"
                )
            kw["read_from_replicas"] = _BOOLS[raw]
        kw.update(overrides)
        if not kw["hosts"]:
            raise ValueError("PGSESSIONS_HOSTS is not set: give comma-separated PostgreSQL DSNs")
        return cls(**kw)  # type: ignore[arg-type]


_BOOLS = {"true": True, "1": True, "on": True, "yes": True}
_BOOLS.update({"false": False, "0": False, "off": False, "no": False})
