"""The router over a cluster that accepts only TLS with SCRAM passwords (``cluster up --tls``):
sessions and replica reads with ``sslmode=verify-full``; plain text, a wrong CA, a host name
the certificate does not name and a missing password are all refused."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgsessions import NoPrimaryError, PostgresSession, RouterConfig, SessionRouter, migrate
from pgsessions.devcluster import LocalCluster
from pgsessions.devcluster.tls import make_ca
from pgsessions.router.lsn import parse_lsn
from tests.integration.test_router import wait_until


def config_for(hosts: list[str], schema: str) -> RouterConfig:
    return RouterConfig(hosts=hosts, schema=schema, check_interval=0.1, connect_timeout=2.0)


def with_params(cluster: LocalCluster, **params: str) -> list[str]:
    return [make_conninfo(dsn, **params) for dsn in cluster.dsns()]


@pytest.fixture
async def tls_schema(tls_env: LocalCluster) -> AsyncIterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    tls_env.primary.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def ssl_client_backends(cluster: LocalCluster) -> dict[str, tuple[int, int]]:
    """node -> (TLS client backends, plain-text client backends) other than this query's."""
    sql = (
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) "
        "FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
        "WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()"
    )
    return {n.name: (int(r[0]), int(r[1])) for n in cluster.nodes for r in n.execute(sql)}


async def test_sessions_and_replica_reads_over_verify_full(
    tls_env: LocalCluster, tls_schema: str
) -> None:
    dsns = tls_env.dsns()
    assert tls_env.tls is not None
    for dsn in dsns:  # what `cluster up --tls` prints: verification on, no password
        params = conninfo_to_dict(dsn)
        assert params["sslmode"] == "verify-full"
        assert params["sslrootcert"] == str(tls_env.tls.ca_cert)
        assert "password" not in params
    async with SessionRouter(config_for(dsns, tls_schema)) as router:
        await migrate(router)
        session = PostgresSession("tls-1", router)
        items = [{"role": "user", "content": f"turn {i}"} for i in range(3)]
        await session.add_items(items)  # type: ignore[arg-type]
        assert await session.get_items() == items
        # the monitor's probes run over TLS too: without them no replica is ever eligible
        await wait_until(lambda: len(router.topology().eligible()) == 2, 15, "replicas eligible")
        assert session.consistency_token is not None
        token = parse_lsn(session.consistency_token)
        await wait_until(
            lambda: all((h.replay_lsn or 0) >= token for h in router.topology().replicas()),
            15,
            "the monitor to see both replicas past the session's token",
        )
        before = router.stats()["reads_on_replicas"]
        for _ in range(10):
            assert await session.get_items() == items
        assert router.stats()["reads_on_replicas"] - before == 10
        backends = ssl_client_backends(tls_env)
    # every node served the router over TLS (hba allows nothing else: no plain backend)
    assert all(tls >= 1 and plain == 0 for tls, plain in backends.values()), backends


async def test_plain_text_is_refused(tls_env: LocalCluster, tls_schema: str) -> None:
    plain = with_params(tls_env, sslmode="disable")
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        await psycopg.AsyncConnection.connect(plain[0], connect_timeout=3)
    with pytest.raises(NoPrimaryError) as info:
        async with SessionRouter(config_for(plain, tls_schema)):
            pass
    assert "no host answered" in str(info.value)


async def test_a_wrong_ca_is_refused(
    tls_env: LocalCluster, tls_schema: str, tmp_path: Path
) -> None:
    other_ca, _ = await asyncio.to_thread(make_ca, tmp_path)
    wrong = with_params(tls_env, sslrootcert=str(other_ca))
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        await psycopg.AsyncConnection.connect(wrong[0], connect_timeout=3)
    with pytest.raises(NoPrimaryError):
        async with SessionRouter(config_for(wrong, tls_schema)):
            pass


async def test_verify_full_checks_the_host_name(tls_env: LocalCluster, tls_schema: str) -> None:
    """The certificates name 127.0.0.1 and localhost: another name for the same address
    is refused (verify-ca would accept it), localhost is accepted."""
    port = tls_env.primary.port
    misnamed = make_conninfo(
        tls_env.primary.dsn, host="db.invalid", hostaddr="127.0.0.1", port=str(port)
    )
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        await psycopg.AsyncConnection.connect(misnamed, connect_timeout=3)
    by_name = with_params(tls_env, host="localhost")
    async with SessionRouter(config_for(by_name, tls_schema)) as router:
        assert router.topology().primary == f"localhost:{port}"


async def test_a_missing_password_is_refused(
    tls_env: LocalCluster, tls_schema: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    empty = tmp_path / "pgpass"
    empty.write_text("")
    empty.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(empty))
    with pytest.raises(psycopg.OperationalError, match="password"):
        await psycopg.AsyncConnection.connect(tls_env.primary.dsn, connect_timeout=3)
    wrong = with_params(tls_env, password="not-the-password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        await psycopg.AsyncConnection.connect(wrong[0], connect_timeout=3)


async def test_the_password_from_pgpassword(
    tls_env: LocalCluster, tls_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PGPASSWORD instead of a passfile: libpq reads it at each connect, pools and probes."""
    assert tls_env.tls is not None
    monkeypatch.delenv("PGPASSFILE")
    monkeypatch.setenv("HOME", "/nonexistent")  # no ~/.pgpass to fall back on
    monkeypatch.setenv("PGPASSWORD", tls_env.tls.password())
    async with SessionRouter(config_for(tls_env.dsns(), tls_schema)) as router:
        await migrate(router)
        await wait_until(lambda: len(router.topology().eligible()) == 2, 15, "replicas eligible")
        session = PostgresSession("tls-env", router)
        await session.add_items([{"role": "user", "content": "x"}])  # type: ignore[list-item]
        assert await session.get_items() == [{"role": "user", "content": "x"}]
