"""Shared fixtures: one real replicated cluster for the suite, a clean schema per test, and
fresh clusters for the tests that break theirs.

With ``PGSESSIONS_TEST_ROLE=app`` the ``router`` fixture connects as an application role:
each test's schema is migrated first by an owner role with ``grant_to`` that app role, which
holds only those grants and ``pg_monitor`` (see the README's Security section)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from psycopg import errors, sql
from psycopg.conninfo import make_conninfo

from pgsessions.devcluster import LocalCluster
from pgsessions.devcluster.cluster import DBNAME
from pgsessions.router import RouterConfig, SessionRouter
from pgsessions.sessions import migrate

AS_APP = os.environ.get("PGSESSIONS_TEST_ROLE") == "app"


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    """Primary + 2 async streaming replicas shared by the suite: keep it healthy."""
    c = LocalCluster(replicas=2, fsync=False)
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def tls_cluster() -> Iterator[LocalCluster]:
    """Primary + 2 replicas that accept only TLS with a SCRAM password, replication included
    (``tls=True``); clients connect with the ``tls_env`` fixture's PGPASSFILE."""
    c = LocalCluster(replicas=2, fsync=False, tls=True)
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def tls_env(tls_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> LocalCluster:
    """The TLS cluster, with its PGPASSFILE in this test's environment (libpq reads it)."""
    for key, value in tls_cluster.client_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    return tls_cluster


@pytest.fixture
def cluster_factory() -> Iterator[Callable[..., LocalCluster]]:
    """Start clusters of the test's own (for fault tests); all are stopped at test end."""
    made: list[LocalCluster] = []

    def make(**kwargs: Any) -> LocalCluster:
        kwargs.setdefault("fsync", False)
        c = LocalCluster(**kwargs)
        made.append(c)
        c.start()
        return c

    try:
        yield make
    finally:
        for c in made:
            c.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """As the app role, skip tests that run their own DDL or table writes through the router:
    the role is refused those by design (tests/integration/test_sessions_roles.py shows it)."""
    if not AS_APP:
        return
    skip = pytest.mark.skip(reason="arranges or inspects tables beyond the app role's grants")
    for item in items:
        if item.get_closest_marker("owner_sql"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def app_roles(cluster: LocalCluster) -> Iterator[tuple[str, str] | None]:
    """(owner, app) LOGIN roles when PGSESSIONS_TEST_ROLE=app, else None."""
    if not AS_APP:
        yield None
        return
    tag = uuid.uuid4().hex[:8]
    owner, app = f"t_owner_{tag}", f"t_app_{tag}"
    p = cluster.primary
    for role in (owner, app):
        p.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    p.execute(
        sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
            sql.Identifier(DBNAME), sql.Identifier(owner)
        )
    )
    p.execute(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(app)))
    try:
        yield owner, app
    finally:
        for role in (app, owner):
            p.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
            p.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _dsns_as(cluster: LocalCluster, role: str) -> list[str]:
    return [make_conninfo(dsn, user=role) for dsn in cluster.dsns()]


async def _migrate_as_owner(cluster: LocalCluster, schema: str, owner: str, app: str) -> None:
    config = RouterConfig(
        hosts=_dsns_as(cluster, owner), schema=schema, check_interval=0.1, read_from_replicas=False
    )
    async with SessionRouter(config) as r:
        await migrate(r, grant_to=app)


@pytest.fixture
def schema(cluster: LocalCluster, app_roles: tuple[str, str] | None) -> Iterator[str]:
    """A schema name of this test's own; dropped afterwards. As the app role: already
    migrated by the owner role (in a thread of its own: the tests' event loop is elsewhere)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    if app_roles is not None:
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, _migrate_as_owner(cluster, name, *app_roles)).result()
    yield name
    drop_schema(cluster, name)


def drop_schema(cluster: LocalCluster, name: str) -> None:
    """DROP SCHEMA, failing within 30 s (naming who holds locks) instead of hanging the run
    when a test left a transaction or a statement running."""
    try:
        cluster.primary.execute(
            f"SET lock_timeout = '30s'; DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
        )
    except errors.LockNotAvailable:
        holders = cluster.primary.execute(
            "SELECT pid, application_name, state, left(query, 120) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND state <> 'idle' AND backend_type = 'client backend'"
        )
        pytest.fail(f"schema {name} stayed locked for 30 s; busy sessions: {holders}")


@pytest.fixture
def router_config(
    cluster: LocalCluster, schema: str, app_roles: tuple[str, str] | None
) -> RouterConfig:
    hosts = cluster.dsns() if app_roles is None else _dsns_as(cluster, app_roles[1])
    return RouterConfig(hosts=hosts, schema=schema, check_interval=0.1)


@pytest.fixture
async def router(router_config: RouterConfig) -> AsyncIterator[SessionRouter]:
    async with SessionRouter(router_config) as r:
        yield r
