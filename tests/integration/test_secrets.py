"""The password never leaves the DSN: not in a log line, a metric label, a repr, an
exception message, `pgsessions status` (text and JSON) or a drill report.

Everything runs against the TLS cluster (SCRAM passwords) with the password written into
the DSNs, the worst case; PGPASSFILE is unset, so the DSN's password is the one in use."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import traceback
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from prometheus_client import CollectorRegistry
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgsessions import PostgresSession, RouterConfig, SessionRouter, migrate
from pgsessions.cli.status import as_json, format_table
from pgsessions.devcluster import LocalCluster
from pgsessions.devcluster.ports import pick_free_port
from pgsessions.monitoring.endpoint import Endpoint
from pgsessions.router.dsn import host_label, redact, scrub
from tests.integration.test_router import wait_until


@pytest.fixture
def no_passfile(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the DSNs carry the password: no PGPASSFILE, PGPASSWORD or ~/.pgpass."""
    monkeypatch.delenv("PGPASSFILE", raising=False)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")


@pytest.fixture
def secret(tls_cluster: LocalCluster, no_passfile: None) -> str:
    """The shared TLS cluster's superuser password."""
    assert tls_cluster.tls is not None
    password = tls_cluster.tls.password()
    assert len(password) >= 16
    return password


def with_password(dsn: str, password: str, **params: Any) -> str:
    return make_conninfo(dsn, password=password, **params)


def assert_clean(secret: str, where: str, *texts: str) -> None:
    for text in texts:
        assert secret not in text, f"the password appears in {where}: {text[:2000]}"


def all_text(exc: BaseException) -> str:
    """str, repr and the whole formatted chain (causes and contexts) of an exception."""
    return "\n".join(
        [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
        + [repr(getattr(exc, a, None)) for a in ("hosts", "args")]
    )


@pytest.mark.fault
async def test_no_password_in_logs_metrics_reprs_or_errors(
    cluster_factory: Callable[..., LocalCluster],
    no_passfile: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A cluster of the test's own: its primary crashes, a write fails, a replica is
    promoted and the router moves to it; everything said on the way is checked."""
    caplog.set_level(logging.DEBUG)  # every logger: pgsessions, psycopg, psycopg.pool
    for name in ("pgsessions", "psycopg"):  # an in-process drill may have quietened them
        caplog.set_level(logging.DEBUG, logger=name)
    c = await asyncio.to_thread(cluster_factory, replicas=2, tls=True)
    assert c.tls is not None
    password = c.tls.password()
    seen: list[str] = []
    config = RouterConfig(
        hosts=[with_password(d, password) for d in c.dsns()],
        check_interval=0.1,
        failover_timeout=1.5,
        connect_timeout=1.0,
    )
    seen += [repr(config), str(config)]
    async with SessionRouter(config) as router:
        endpoint = Endpoint(router, CollectorRegistry())
        await migrate(router)
        session = PostgresSession("secret-1", router)
        await session.add_items([{"role": "user", "content": "hello"}])  # type: ignore[list-item]
        await wait_until(lambda: len(router.topology().eligible()) == 2, 15, "replicas")
        assert await session.get_items() == [{"role": "user", "content": "hello"}]
        seen += [repr(router), repr(session), repr(router.topology()), str(router.stats())]
        seen.append(endpoint.metrics()[0].decode())
        # the primary crashes: a write fails after failover_timeout, the monitor notes it
        await asyncio.to_thread(c.crash, c.primary)
        with pytest.raises(Exception) as failed:
            await session.add_items([{"role": "user", "content": "lost"}])  # type: ignore[list-item]
        seen.append(all_text(failed.value))
        await wait_until(lambda: any(not h.up for h in router.topology().hosts), 10, "down")
        topo = router.topology()
        seen += [format_table(topo), json.dumps(as_json(topo, router.stats()))]
        seen += [repr(topo), endpoint.metrics()[0].decode(), endpoint.health()[1].decode()]
        # a replica is promoted: the router finds it (and logs the new primary)
        new = c.replicas[0]
        await asyncio.to_thread(c.promote, new)
        await session.add_items([{"role": "user", "content": "again"}])  # type: ignore[list-item]
        assert router.topology().primary == new.host
        seen += [endpoint.metrics()[0].decode(), format_table(router.topology())]

    # a server that is down, a host that does not resolve, a wrong password
    closed = pick_free_port()
    for broken in (
        with_password(new.dsn, password, port=str(closed)),
        with_password(new.dsn, password, host="db.invalid"),
        with_password(new.dsn, password + "x"),
    ):
        with pytest.raises(Exception) as refused:
            async with SessionRouter(RouterConfig(hosts=[broken], connect_timeout=1.0)):
                pass
        seen.append(all_text(refused.value))
    # DSNs that cannot be parsed, in both syntaxes
    for bad in (
        f"postgresql://postgres:{password}@127.0.0.1:{closed}/db?no_such_option=1",
        f"host=127.0.0.1 password={password} no_such_option=1",
        f"postgresql://postgres:{password}%ZZ@127.0.0.1/db",  # libpq quotes the bad token
        f"host=127.0.0.1 password='{password}",
    ):
        with pytest.raises(ValueError) as invalid:
            RouterConfig(hosts=[bad])
        seen.append(all_text(invalid.value))

    records = caplog.records
    # the log check proves something only if both the router and the pool spoke
    assert {r.name.split(".")[0] for r in records} >= {"pgsessions", "psycopg"}, records
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for record in records:
        assert_clean(password, f"a log line of {record.name}", formatter.format(record))
    assert_clean(password, "a repr, metric, status or exception", *seen)
    # the checks above saw what they were meant to see
    text = "\n".join(seen)
    assert "pgsessions_host_up{" in text and f"127.0.0.1:{closed}" in text
    assert "RouterConfig(hosts=" in text and "***" in text


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pgsessions", *args],
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSFILE", "PGPASSWORD")}
    env.update(HOME="/nonexistent", **extra)
    return env


def test_no_password_in_status_output(tls_cluster: LocalCluster, secret: str) -> None:
    down = with_password(tls_cluster.primary.dsn, secret, port=str(pick_free_port()))
    hosts = [with_password(d, secret) for d in tls_cluster.dsns()] + [down]
    for extra in ([], ["--json"]):
        # the hosts come from PGSESSIONS_HOSTS, as in a deployment
        proc = run_cli("status", *extra, env=cli_env(PGSESSIONS_HOSTS=",".join(hosts)))
        assert proc.returncode == 0, proc.stderr
        assert_clean(secret, f"status {' '.join(extra)}", proc.stdout, proc.stderr)
        assert "primary" in proc.stdout and f"127.0.0.1:{tls_cluster.primary.port}" in proc.stdout
    report = json.loads(proc.stdout)
    notes = [h["error"] for h in report["hosts"] if h["error"]]
    assert notes, report  # the down host's error was shown, without the password


def test_no_password_in_a_drill_report(tls_cluster: LocalCluster, secret: str) -> None:
    schema = f"t_drill_{uuid.uuid4().hex[:8]}"
    hosts = [with_password(d, secret) for d in tls_cluster.dsns()]
    try:
        proc = run_cli(
            "drill",
            "--hosts",
            *hosts,
            "--trigger",
            "true",
            "--schema",
            schema,
            "--sessions",
            "4",
            "--warmup",
            "1",
            "--hold",
            "0.5",
            "--after",
            "0.5",
            "--json",
            env=cli_env(),
        )
    finally:
        tls_cluster.primary.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    assert_clean(secret, "the drill report", proc.stdout, proc.stderr)
    report = json.loads(proc.stdout)
    [scenario] = report["scenarios"]
    assert scenario["scenario"] == "trigger" and "error" not in scenario, scenario
    assert scenario["writes"]["acknowledged"] > 0, scenario


# malformed DSNs: no database needed ------------------------------------------------------------
PIECES = ("Zq7", "Xk9", "Wm3", "Jp5")
P = "Zq7@Xk9:Wm3/Jp5"  # '@', ':' and '/' in one password
Q = quote(P, safe="")
MALFORMED = [
    f"postgresql://app:{P}@db1:5432/agents",
    "postgresql://app:Zq7@Xk9@db1/agents",  # the report: split at the first '@'
    "postgresql://app:Zq7@Xk9Wm3Jp5@db1:5432,db2:5433/agents",  # multi-host
    "postgresql://app:Zq7/Xk9@db1/agents",  # '/' ends the authority: host app, port Zq7
    "postgresql://app:Zq7/Xk9Wm3Jp5@db1:5432,db2:5433/agents",
    f"postgresql://app@db1/agents?password={P}",
    f"postgres://app:{P}@db1/agents, postgresql://app@db2/agents",  # one of a list
    "postgresql://app:Zq7 Xk9@db1/agents",  # an unencoded space
    "postgresql://app:Zq7%Xk9@db1/agents",  # a bad percent escape
    "host=db1 password=Zq7 Xk9 port=5432",  # key=value, unquoted space
    "host=db1 password='Zq7@Xk9:Wm3/Jp5",  # unterminated quote
]
WELL_FORMED = [
    (f"postgresql://app:{Q}@db1:5432/agents", ["db1:5432"]),
    (f"postgresql://app:{Q}@db1:5432,db2:5433/agents", ["db1:5432", "db2:5433"]),
    ("postgresql://app:Zq7:Xk9@db1/agents", ["db1:5432"]),  # ':' needs no encoding
    (f"postgresql://app@db1/agents?password={Q}", ["db1:5432"]),
    (f"host=db1 password='{P}'", ["db1:5432"]),
    (f"host=db1 password={P}", ["db1:5432"]),  # key=value needs no quoting for these
    (f"host=db1,db2 port=1,2 password={P}", ["db1:1", "db2:2"]),
]


def assert_no_piece(*texts: str) -> None:
    for text in texts:
        for piece in PIECES:
            assert piece not in text, f"{piece!r} of the password shows in: {text}"


@pytest.mark.parametrize("dsn", MALFORMED)
def test_a_malformed_dsn_is_refused_without_a_piece_of_its_password(dsn: str) -> None:
    with pytest.raises(ValueError, match="is not a valid PostgreSQL DSN") as refused:
        RouterConfig(hosts=dsn)
    assert_no_piece(all_text(refused.value))
    for part in dsn.split(", "):
        assert_no_piece(host_label(part), redact(part), scrub(part))


@pytest.mark.parametrize(("dsn", "labels"), WELL_FORMED)
def test_a_password_with_at_colon_slash_never_shows(dsn: str, labels: list[str]) -> None:
    config = RouterConfig(hosts=dsn)
    assert [host_label(h) for h in config.host_list] == labels
    assert_no_piece(repr(config), str(config), scrub(dsn))
    assert_no_piece(*(redact(h) for h in config.host_list))
    assert {conninfo_to_dict(h)["password"] for h in config.host_list} <= {P, "Zq7:Xk9"}


async def test_a_password_with_at_colon_slash_stays_out_of_logs_and_metrics(
    cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Against real servers (trust auth: the password travels but is not checked), in a
    multi-host URL with the password percent-encoded and as key=value strings; a host that
    is down makes the router log and count it."""
    caplog.set_level(logging.DEBUG)
    for name in ("pgsessions", "psycopg"):
        caplog.set_level(logging.DEBUG, logger=name)
    nodes = [conninfo_to_dict(d) for d in cluster.dsns()]
    hosts = ",".join(f"{n['host']}:{n['port']}" for n in nodes)
    url = f"postgresql://{nodes[0]['user']}:{Q}@{hosts}/{nodes[0]['dbname']}"
    down = make_conninfo(cluster.dsns()[0], port=str(pick_free_port()), password=P)
    config = RouterConfig(
        hosts=[url, down], check_interval=0.1, connect_timeout=1.0, schema="secrets_at"
    )
    seen = [repr(config), str(config)]
    async with SessionRouter(config) as router:
        endpoint = Endpoint(router, CollectorRegistry())
        await migrate(router)
        session = PostgresSession("secret-at", router)
        await session.add_items([{"role": "user", "content": "hi"}])  # type: ignore[list-item]
        assert await session.get_items() == [{"role": "user", "content": "hi"}]
        await wait_until(lambda: any(not h.up for h in router.topology().hosts), 10, "down")
        seen += [repr(router), repr(router.topology()), str(router.stats())]
        seen += [endpoint.metrics()[0].decode(), format_table(router.topology())]
        async with router.primary_connection() as conn:
            await conn.execute("DROP SCHEMA secrets_at CASCADE")
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    seen += [formatter.format(r) for r in caplog.records]
    assert any("down" in t or "failed" in t for t in seen[-len(caplog.records) :])
    assert_no_piece(*seen)
