"""How the router's connections are opened: session options and prepared statements.

Settings the router needs on every connection (``statement_timeout``, read committed) are
given as connection options at connect time, never with a session-level ``SET``: through a
transaction pooler a session-level setting outlives the transaction and reaches other
clients. A pooler that refuses the ``options`` startup parameter (PgBouncer) gets none; the
server's (or role's) defaults apply there and the router's own deadline still bounds every
statement.

Server-side prepared statements (psycopg prepares a statement after it ran
``PREPARE_THRESHOLD`` times) break behind a pooler that cannot keep them (PgBouncer < 1.21
in transaction mode). ``auto`` starts every connection without them and turns them on only
when the connection reaches PostgreSQL directly: the backend's ``pg_backend_pid()`` equals
the process id the server announced at connect time (a pooler announces one of its own).
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from .arrays import ADAPTERS
from .config import PreparedStatements, RouterConfig
from .dsn import host_label
from .loops import track_connection

log = logging.getLogger(__name__)

#: psycopg's default: a statement is prepared once it has run this many times
PREPARE_THRESHOLD = 5

#: conninfo strings whose server refused the ``options`` startup parameter (a pooler)
_refuses_options: set[str] = set()

#: SQLSTATEs of the failures a pooler causes to psycopg's ``_pg3_*`` prepared statements
_PREPARED_STATES = ("26000", "42P05", "08P01")


def session_options(config: RouterConfig) -> str:
    """The ``options`` startup parameter: per-connection settings, set at connect time."""
    ms = int(config.statement_timeout * 1000)
    # a statement's snapshot is taken when it starts (the router relies on it)
    return f"-c statement_timeout={ms} -c default_transaction_isolation=read\\ committed"


def connect_kwargs(conninfo: str, config: RouterConfig) -> dict[str, Any]:
    """psycopg connect arguments of the router's connections to one host (pools, probes)."""
    mode = config.prepared_statements_for(conninfo)
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "connect_timeout": max(1, round(config.connect_timeout)),
        "prepare_threshold": PREPARE_THRESHOLD if mode == "on" else None,
        "context": ADAPTERS,
    }
    # the router's settings come last, so that they win over the DSN's own options
    own = conninfo_to_dict(conninfo).get("options")
    kwargs["options"] = " ".join(str(o) for o in (own, session_options(config)) if o)
    return kwargs


def refuses_options(exc: BaseException) -> bool:
    """True when a connection failed because the server (a pooler) refused ``options``."""
    text = str(exc)
    return "unsupported" in text and "startup parameter" in text and "options" in text


class RouterConnection(psycopg.AsyncConnection[Any]):
    """An AsyncConnection that drops ``options`` when the server refuses them (once per
    conninfo, remembered for the process)."""

    @classmethod
    async def connect(cls, conninfo: str = "", **kwargs: Any) -> RouterConnection:
        if conninfo in _refuses_options:
            kwargs.pop("options", None)
        try:
            conn = await super().connect(conninfo, **kwargs)
        except psycopg.OperationalError as exc:
            if "options" not in kwargs or not refuses_options(exc):
                raise
            _refuses_options.add(conninfo)
            kwargs.pop("options")
            log.info("pgsessions: the server refused connect options: connecting without")
            conn = await super().connect(conninfo, **kwargs)
        track_connection(conn)  # a forked child cuts itself off from it (loops.py)
        return conn


def apply_prepare_mode(
    conn: psycopg.AsyncConnection[Any], mode: PreparedStatements, server_pid: int
) -> None:
    """Set ``conn.prepare_threshold`` for ``mode``; ``server_pid`` is ``pg_backend_pid()``
    as the connection's first query returned it."""
    if mode == "auto":
        direct = server_pid == conn.info.backend_pid
        conn.prepare_threshold = PREPARE_THRESHOLD if direct else None
    else:
        conn.prepare_threshold = PREPARE_THRESHOLD if mode == "on" else None


async def configure(
    conn: psycopg.AsyncConnection[Any], config: RouterConfig, conninfo: str
) -> bool:
    """The first query on every router connection (pools and probes): set its
    prepared-statement mode for ``conninfo``'s host; returns whether the server is in
    recovery."""
    cur = await conn.execute("SELECT pg_is_in_recovery(), pg_backend_pid()")
    row = await cur.fetchone()
    if row is None or len(row) != 2 or not isinstance(row[1], int):
        raise psycopg.InterfaceError(
            f"{host_label(conninfo)}: unexpected reply to the connection setup query: {row!r}"
        )
    apply_prepare_mode(conn, config.prepared_statements_for(conninfo), row[1])
    return bool(row[0])


def prepared_statement_failure(exc: BaseException) -> str | None:
    """What went wrong, when ``exc`` is a pooler losing or mixing up psycopg's prepared
    statements (26000 / 42P05 / 08P01 naming a ``_pg3_`` statement); None otherwise."""
    state = getattr(exc, "sqlstate", None) if isinstance(exc, psycopg.Error) else None
    if state not in _PREPARED_STATES:
        return None
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if '"_pg3_' in text or (state == "08P01" and text.startswith("bind message")):
        return f"{state}: {text[:160]}"
    return None
