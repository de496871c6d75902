"""The contenders: each stores Agents SDK session history its own way on the same cluster.

A contender opens its pools/engines once (as a real server would), hands out SDK ``Session``
objects by id, seeds big histories with one server-side statement, and drops what it made.
"""

from __future__ import annotations

import abc
import asyncio
import importlib.util
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from agents import SessionSettings
from agents.memory.session import SessionABC
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from .payloads import SEED_FILLER_MD5S


@dataclass
class BenchEnv:
    """Where the contenders run: the cluster, a scratch directory, names, pool size."""

    primary_dsn: str
    replica_dsns: list[str]
    workdir: Path
    #: prefix of every schema, table and session id this run creates (unique per run)
    prefix: str = "bench"
    #: connections per host for every PostgreSQL contender (min = max: no growth mid-run)
    pool_size: int = 16
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dsns(self) -> list[str]:
        return [self.primary_dsn, *self.replica_dsns]


def seed_json_sql(i: str) -> str:
    """SQL (PostgreSQL) building seeded item ``i`` as json; see payloads.check_seeded_tail."""
    return (
        f"json_build_object('role', CASE WHEN mod({i}, 2) = 1 THEN 'user' ELSE 'assistant' END, "
        f"'content', 'seed-' || {i} || ' ' || repeat(md5({i}::text), {SEED_FILLER_MD5S}))"
    )


class Contender(abc.ABC):
    """One way of storing session history, benchmarked against the others."""

    name: str = ""
    description: str = ""
    #: a contender that fails on open is reported as skipped with this reason
    skip_reason: str | None = None

    def unavailable(self) -> str | None:
        """Why this contender cannot run here (missing package, unlanded module), or None."""
        return None

    @abc.abstractmethod
    async def open(self, env: BenchEnv) -> None:
        """Create pools/engines and tables."""

    @abc.abstractmethod
    def session(self, session_id: str) -> Any:
        """An SDK Session object for ``session_id`` (the harness keeps one per id)."""

    async def seed(self, session_id: str, count: int) -> None:
        """Give ``session_id`` ``count`` seeded items (default: through the API, in batches)."""
        s = self.session(session_id)
        done = 0
        while done < count:
            batch = []
            for i in range(done + 1, min(count, done + 1000) + 1):
                role = "user" if i % 2 else "assistant"
                batch.append({"role": role, "content": f"seed-{i} " + "0" * 32 * SEED_FILLER_MD5S})
            await s.add_items(batch)
            done += len(batch)

    def read_counts(self) -> dict[str, int] | None:
        """Cumulative reads by ``role/reason`` where the contender routes reads, else None."""
        return None

    async def warm(self, connections: int) -> None:  # noqa: B027 - optional hook
        """Open ``connections`` pooled connections now, as a server long up has them (a
        contender whose pool opens them at :meth:`open` has nothing to do)."""

    async def analyze(self) -> None:  # noqa: B027 - optional hook
        """Refresh planner statistics after seeding (what autovacuum would do soon anyway)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Close pools/engines/sessions."""

    async def drop(self) -> None:  # noqa: B027 - optional hook
        """Remove what :meth:`open` created (tables, files)."""


async def _admin(dsn: str, statements: list[sql.Composable | str], params: Any = None) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for st in statements:
            await conn.execute(st, params)


# ------------------------------------------------------------------------------ raw floor
#: the floor's read of a session's latest %s items from table {t}, in key {k} order
FLOOR_READ = (
    "SELECT coalesce(json_agg(item ORDER BY {k}), '[]'::json) FROM"
    " (SELECT {k}, item FROM {t} WHERE session_id = %s ORDER BY {k} DESC LIMIT %s) t"
)


class FloorSession(SessionABC):
    """The raw floor: one statement to append, one to read, autocommit, no router."""

    def __init__(self, session_id: str, pool: AsyncConnectionPool[Any], schema: str) -> None:
        self.session_id = session_id
        self.session_settings = SessionSettings()
        self._pool = pool
        t = sql.Identifier(schema, "messages")
        self._append = sql.SQL(
            "INSERT INTO {} (session_id, item) "
            "SELECT %s, x FROM json_array_elements(%s::json) WITH ORDINALITY AS u(x, n) "
            "ORDER BY n"
        ).format(t)
        self._read = sql.SQL(FLOOR_READ).format(t=t, k=sql.Identifier("id"))
        self._pop = sql.SQL(
            "DELETE FROM {t} WHERE session_id = %s AND id = "
            "(SELECT max(id) FROM {t} WHERE session_id = %s) RETURNING item"
        ).format(t=t)
        self._clear = sql.SQL("DELETE FROM {} WHERE session_id = %s").format(t)

    async def get_items(self, limit: int | None = None) -> list[Any]:
        if limit is None:
            limit = self.session_settings.limit
        async with self._pool.connection() as conn:
            cur = await conn.execute(self._read, (self.session_id, limit))
            row = await cur.fetchone()
        return list(row[0]) if row else []

    async def add_items(self, items: list[Any]) -> None:
        if not items:
            return
        payload = json.dumps(items, separators=(",", ":"))
        async with self._pool.connection() as conn:
            await conn.execute(self._append, (self.session_id, payload))

    async def pop_item(self) -> Any:
        async with self._pool.connection() as conn:
            cur = await conn.execute(self._pop, (self.session_id, self.session_id))
            row = await cur.fetchone()
        return row[0] if row else None

    async def clear_session(self) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(self._clear, (self.session_id,))


class FloorContender(Contender):
    name = "raw-floor"
    description = "hand-written psycopg_pool loop: 1 statement per append/read, autocommit"

    def __init__(self) -> None:
        self._pool: AsyncConnectionPool[Any] | None = None
        self._schema = ""
        self._dsn = ""

    async def open(self, env: BenchEnv) -> None:
        self._schema = f"{env.prefix}_floor"
        self._dsn = env.primary_dsn
        s = sql.Identifier(self._schema)
        await _admin(
            self._dsn,
            [
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(s),
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {}.messages (session_id text NOT NULL, "
                    "id bigint GENERATED ALWAYS AS IDENTITY, item json NOT NULL, "
                    "PRIMARY KEY (session_id, id))"
                ).format(s),
            ],
        )
        self._pool = AsyncConnectionPool(
            env.primary_dsn,
            min_size=env.pool_size,
            max_size=env.pool_size,
            kwargs={"autocommit": True},
            open=False,
        )
        await self._pool.open(wait=True)

    def session(self, session_id: str) -> FloorSession:
        assert self._pool is not None
        return FloorSession(session_id, self._pool, self._schema)

    async def seed(self, session_id: str, count: int) -> None:
        q = sql.SQL(
            "INSERT INTO {}.messages (session_id, item) SELECT %s, "
            + seed_json_sql("i")
            + " FROM generate_series(1, %s) AS i ORDER BY i"
        ).format(sql.Identifier(self._schema))
        await _admin(self._dsn, [q], (session_id, count))

    async def analyze(self) -> None:
        await _admin(
            self._dsn, [sql.SQL("ANALYZE {}.messages").format(sql.Identifier(self._schema))]
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def drop(self) -> None:
        await _admin(
            self._dsn,
            [sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self._schema))],
        )


# ------------------------------------------------------------------------------ pgsessions
class PgSessionsContender(Contender):
    """pgsessions' PostgresSession through a SessionRouter, routed or primary-only.

    Both variants share one schema (session ids differ): it is the same store, read from
    different places.
    """

    def __init__(self, routed: bool, name: str | None = None, **router_options: Any) -> None:
        self.routed = routed
        self.router_options = router_options
        self.name = name or ("pgsessions-routed" if routed else "pgsessions-primary")
        self.description = (
            "PostgresSession, reads on caught-up replicas"
            if routed
            else "PostgresSession, primary only (no replicas configured)"
        )
        self._router: Any = None
        self._session_cls: Any = None
        self._schema = ""
        self._dsn = ""

    def unavailable(self) -> str | None:
        try:
            import pgsessions

            getattr(pgsessions, "PostgresSession")  # noqa: B009
            getattr(pgsessions, "migrate")  # noqa: B009
        except (ImportError, AttributeError) as exc:
            return f"pgsessions.PostgresSession/migrate not available yet ({exc})"
        return None

    async def open(self, env: BenchEnv) -> None:
        from pgsessions import PostgresSession, RouterConfig, SessionRouter, migrate

        self._schema = f"{env.prefix}_pgs"
        self._dsn = env.primary_dsn
        hosts = env.dsns if self.routed else [env.primary_dsn]
        cfg = RouterConfig(
            hosts=hosts,
            schema=self._schema,
            primary_pool_min=env.pool_size,
            primary_pool_max=env.pool_size,
            replica_pool_min=env.pool_size,
            replica_pool_max=env.pool_size,
            read_from_replicas=self.routed,
            name=self.name,
            **self.router_options,
        )
        router = SessionRouter(cfg)
        await router.open()
        self._router = router
        await migrate(router)
        self._session_cls = PostgresSession

    def session(self, session_id: str) -> Any:
        return self._session_cls(session_id, self._router)

    def read_counts(self) -> dict[str, int] | None:
        stats = getattr(self._router, "stats", None)
        if stats is None:
            return None
        reads = stats().get("reads", {})
        return {f"{role}/{why}": n for role, by in reads.items() for why, n in by.items()}

    async def seed(self, session_id: str, count: int) -> None:
        try:
            await _admin(
                self._dsn, _pgsessions_seed_sql(self._schema), {"sid": session_id, "n": count}
            )
        except psycopg.Error:
            # the schema moved on from migration 0001: seed through the API instead
            await self.session(session_id).clear_session()
            await super().seed(session_id, count)

    async def analyze(self) -> None:
        await _admin(
            self._dsn, [sql.SQL("ANALYZE {}.messages").format(sql.Identifier(self._schema))]
        )

    async def close(self) -> None:
        if self._router is not None:
            await self._router.close()
            self._router = None

    async def drop(self) -> None:
        await _admin(
            self._dsn,
            [sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self._schema))],
        )


def _pgsessions_seed_sql(schema: str) -> list[sql.Composable | str]:
    """Server-side seeding for pgsessions' schema (migration 0001): the conversation row with
    its counters, then the items with their seq and extracted role."""
    s = sql.Identifier(schema)
    return [
        sql.SQL(
            "INSERT INTO {}.conversations (session_id, next_seq, item_count, user_turns) "
            "VALUES (%(sid)s, %(n)s + 1, %(n)s, (%(n)s + 1) / 2)"
        ).format(s),
        sql.SQL(
            "INSERT INTO {}.messages (session_id, seq, item, role) "
            "SELECT %(sid)s, i, " + seed_json_sql("i") + ", "
            "CASE WHEN mod(i, 2) = 1 THEN 'user' ELSE 'assistant' END "
            "FROM generate_series(1, %(n)s) AS i ORDER BY i"
        ).format(s),
    ]


# ------------------------------------------------------------------------------ SQLAlchemy
def _sqlalchemy_url(dsn: str) -> Any:
    from sqlalchemy.engine import URL

    info = psycopg.conninfo.conninfo_to_dict(dsn)
    return URL.create(
        "postgresql+asyncpg",
        username=str(info.get("user") or "postgres"),
        password=str(info["password"]) if info.get("password") else None,
        host=str(info.get("host") or "127.0.0.1"),
        port=int(info.get("port") or 5432),
        database=str(info.get("dbname") or "postgres"),
    )


class SQLAlchemyContender(Contender):
    name = "sqlalchemy"
    description = "SDK SQLAlchemySession + asyncpg on the primary, one shared engine"

    def __init__(self) -> None:
        self._engine: Any = None
        self._schema = ""
        self._dsn = ""

    def unavailable(self) -> str | None:
        for mod in ("sqlalchemy", "asyncpg"):
            if importlib.util.find_spec(mod) is None:
                return f"package {mod!r} missing: pip install -e '.[bench]'"
        return None

    async def open(self, env: BenchEnv) -> None:
        from agents.extensions.memory.sqlalchemy_session import SQLAlchemySession
        from sqlalchemy.ext.asyncio import create_async_engine

        self._schema = f"{env.prefix}_sqla"
        self._dsn = env.primary_dsn
        await _admin(
            self._dsn,
            [sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self._schema))],
        )
        self._engine = create_async_engine(
            _sqlalchemy_url(env.primary_dsn),
            pool_size=env.pool_size,
            max_overflow=0,
            connect_args={"server_settings": {"search_path": self._schema}},
        )
        # create the tables once, as a deployment's migration would
        await SQLAlchemySession("setup", engine=self._engine, create_tables=True).get_items(1)

    def session(self, session_id: str) -> Any:
        from agents.extensions.memory.sqlalchemy_session import SQLAlchemySession

        return SQLAlchemySession(session_id, engine=self._engine)

    async def warm(self, connections: int) -> None:
        # the engine's pool opens its connections lazily, the first requests would wait
        conns = await asyncio.gather(*(self._engine.connect() for _ in range(connections)))
        for conn in conns:
            await conn.close()  # back to the pool, still open

    async def seed(self, session_id: str, count: int) -> None:
        s = sql.Identifier(self._schema)
        await _admin(
            self._dsn,
            [
                sql.SQL("INSERT INTO {}.agent_sessions (session_id) VALUES (%(sid)s)").format(s),
                # distinct, increasing created_at: the SDK orders by (created_at, id)
                sql.SQL(
                    "INSERT INTO {}.agent_messages (session_id, message_data, created_at) "
                    "SELECT %(sid)s, " + seed_json_sql("i") + "::text, "
                    "localtimestamp - (%(n)s - i) * interval '1 millisecond' "
                    "FROM generate_series(1, %(n)s) AS i ORDER BY i"
                ).format(s),
            ],
            {"sid": session_id, "n": count},
        )

    async def analyze(self) -> None:
        await _admin(
            self._dsn, [sql.SQL("ANALYZE {}.agent_messages").format(sql.Identifier(self._schema))]
        )

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def drop(self) -> None:
        await _admin(
            self._dsn,
            [sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self._schema))],
        )


# ------------------------------------------------------------------------------ SQLite
class SQLiteContender(Contender):
    name = "sqlite-file"
    description = "SDK SQLiteSession on a local file (WAL), the 'just use SQLite' reference"

    def __init__(self) -> None:
        self._path: Path | None = None
        self._sessions: list[Any] = []

    async def open(self, env: BenchEnv) -> None:
        from agents import SQLiteSession

        self._path = env.workdir / f"{env.prefix}_sessions.sqlite3"
        SQLiteSession("setup", self._path).close()

    def session(self, session_id: str) -> Any:
        from agents import SQLiteSession

        assert self._path is not None
        s = SQLiteSession(session_id, self._path)
        self._sessions.append(s)
        return s

    async def seed(self, session_id: str, count: int) -> None:
        assert self._path is not None
        path = self._path

        def run() -> None:
            filler = "0123456789abcdef" * 2 * SEED_FILLER_MD5S
            with sqlite3.connect(path, timeout=30) as conn:
                conn.execute(
                    "INSERT OR IGNORE INTO agent_sessions (session_id) VALUES (?)", (session_id,)
                )
                conn.execute(
                    "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < ?) "
                    "INSERT INTO agent_messages (session_id, message_data) "
                    "SELECT ?, json_object('role', CASE WHEN i % 2 = 1 THEN 'user' "
                    "ELSE 'assistant' END, 'content', 'seed-' || i || ' ' || ?) FROM g",
                    (count, session_id, filler),
                )
            conn.close()

        await asyncio.to_thread(run)

    async def close(self) -> None:
        for s in self._sessions:
            s.close()
        self._sessions.clear()

    async def drop(self) -> None:
        if self._path is not None:
            _remove_sqlite_files(self._path)


def _remove_sqlite_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def default_contenders() -> list[Contender]:
    """The five contenders of issue 7, pgsessions-routed first (ratios are against it)."""
    return [
        PgSessionsContender(routed=True),
        PgSessionsContender(routed=False),
        SQLAlchemyContender(),
        FloorContender(),
        SQLiteContender(),
    ]
