"""Monitoring: real scrapes of /metrics and /healthz over HTTP, against the real cluster."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from pgsessions.cli.serve_metrics import add_serve_metrics_command
from pgsessions.devcluster import LocalCluster
from pgsessions.monitoring import (
    METRICS,
    instrument,
    metrics_app,
    serve,
    uninstrument,
)
from pgsessions.monitoring.metrics import SHARD_ONLY
from pgsessions.router import RouterConfig, SessionRouter
from tests.helpers import apoll
from tests.monitoring_support import (  # noqa: F401 - fixtures
    get_sync,
    healthz,
    prometheus_bin_fixture,
    promtool_fixture,
    scrape,
    scrape_sync,
)

ROOT = Path(__file__).resolve().parent.parent.parent
DEPLOY = ROOT / "deploy"
PASSWORD = "s3cr3t-Pw0rd"
NEED_YAML = "PyYAML parses the deploy files: pip install pyyaml (it is in the dev extras)"


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def served(router: SessionRouter, registry: CollectorRegistry) -> AsyncIterator[str]:
    """The fixture router served on a free port; yields the base URL."""
    server = serve(router, port=0, registry=registry)
    try:
        yield server.url
    finally:
        server.stop()


async def make_table(router: SessionRouter) -> str:
    table = f"{router.config.schema}.mon_{uuid.uuid4().hex[:8]}"
    async with router.primary_connection() as conn:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {router.config.schema}")
        await conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, v text)")
    return table


async def workload(router: SessionRouter, table: str, n: int = 5) -> None:
    for i in range(n):
        await router.execute_write(
            "add_items", f"s{i}", f"INSERT INTO {table} (v) VALUES (%s)", ("x",)
        )
        await router.execute_read("get_items", f"s{i}", f"SELECT count(*) FROM {table}")
        await router.execute_read("get_items", None, "SELECT 1")


def label_names(spec_labels: tuple[str, ...], sample_name: str, spec_name: str) -> set[str]:
    names = {"router", *spec_labels}
    if sample_name.endswith("_bucket"):
        names.add("le")
    return names


# ---------------------------------------------------------------------------- exposition
async def test_every_metric_is_exposed_with_its_labels(
    router: SessionRouter, served: str, cluster: LocalCluster
) -> None:
    table = await make_table(router)
    await workload(router, table)
    result = await scrape(served)
    for spec in METRICS:
        if spec.name in SHARD_ONLY:  # a ShardedRouter's (tests/lab/test_move_metrics.py)
            continue
        family = spec.name.removesuffix("_total")
        assert family in result.families, f"{spec.name} missing from /metrics"
        typ, samples = result.families[family]
        assert typ == spec.type, f"{spec.name}: type {typ}, expected {spec.type}"
        for s in samples:
            assert set(s.labels) == label_names(spec.labels, s.name, spec.name), (spec.name, s)
            assert s.labels["router"] == router.config.name
    # the snapshot gauges have one series per host (replica gauges per replica)
    hosts = {n.host for n in cluster.nodes}
    replicas = {n.host for n in cluster.replicas}
    assert {s.labels["host"] for s in result.samples("pgsessions_host_up")} == hosts
    assert result.value("pgsessions_host_up", host=cluster.primary.host, role="primary") == 1
    assert {s.labels["host"] for s in result.samples("pgsessions_replica_eligible")} == replicas
    assert result.value("pgsessions_primary_known") == 1
    assert result.value("pgsessions_writable_hosts") == 1
    primary_pool = result.value("pgsessions_pool_size", host=cluster.primary.host)
    assert primary_pool is not None and primary_pool >= 1
    # unlabelled counters are there from the start, at 0
    assert result.value("pgsessions_failovers_total") == 0
    assert result.value("pgsessions_split_brain_total") == 0
    assert result.value("pgsessions_failover_duration_seconds_count") == 0
    # no session id ever becomes a label value
    assert not re.search(r'="s\d"', result.text)


async def test_no_credentials_in_labels(cluster: LocalCluster, registry: CollectorRegistry) -> None:
    """A DSN with a user and password shows up as host:port only (trust auth ignores it)."""
    dsns = [d.replace("postgres@", f"postgres:{PASSWORD}@") for d in cluster.dsns()]
    assert all(PASSWORD in d for d in dsns)
    config = RouterConfig(hosts=dsns, name="creds", check_interval=0.1)
    async with SessionRouter(config) as router:
        await router.execute_read("get_items", None, "SELECT 1")
        with serve(router, port=0, registry=registry) as server:
            result = await scrape(server.url)
            _, body, _ = await asyncio.to_thread(get_sync, f"{server.url}/healthz")
    assert PASSWORD not in result.text and PASSWORD.encode() not in body
    for _, samples in result.families.values():
        for s in samples:
            for value in s.labels.values():
                assert "@" not in value and "://" not in value and "password" not in value
            if "host" in s.labels:
                assert re.fullmatch(r"127\.0\.0\.1:\d+", s.labels["host"]), s


# ---------------------------------------------------------------------------- /healthz
async def test_healthz_ok_with_a_primary(
    router: SessionRouter, served: str, cluster: LocalCluster
) -> None:
    status, body = await healthz(served)
    assert status == 200
    assert body["status"] == "ok"
    assert body["routers"] == {
        "default": {
            "open": True,
            "primary": cluster.primary.host,
            "eligible_replicas": body["routers"]["default"]["eligible_replicas"],  # type: ignore[index]
            "hosts_up": 3,
            "hosts": 3,
        }
    }


async def test_closed_router_stops_reporting_and_healthz_503(
    router_config: RouterConfig, registry: CollectorRegistry
) -> None:
    router = SessionRouter(router_config)
    await router.open()
    server = serve(router, port=0, registry=registry)
    try:
        assert (await healthz(server.url))[0] == 200
        assert (await scrape(server.url)).samples("pgsessions_host_up")
        await router.close()
        status, body = await healthz(server.url)
        assert status == 503 and body["status"] == "unavailable"
        result = await scrape(server.url)
        assert not result.samples("pgsessions_host_up")
        assert not result.samples("pgsessions_failovers_total")
        # the families stay declared, so scrapers see "no series", not a broken target
        assert "pgsessions_host_up" in result.families
    finally:
        server.stop()
        await router.close()


async def test_unknown_paths_and_head(served: str) -> None:
    status, body, _ = await asyncio.to_thread(get_sync, f"{served}/nope")
    assert status == 404
    status, body, headers = await asyncio.to_thread(get_sync, f"{served}/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert int(headers["Content-Length"]) == len(body)


async def test_server_stop_frees_the_port(
    router: SessionRouter, registry: CollectorRegistry
) -> None:
    server = serve(router, port=0, registry=registry)
    port = server.port
    server.stop()
    again = serve(router, port=port, registry=registry)  # rebinding works at once
    try:
        assert again.port == port
        assert (await healthz(again.url))[0] == 200
    finally:
        again.stop()


# ---------------------------------------------------------------------------- several routers
async def test_several_routers_share_a_registry(
    cluster: LocalCluster, registry: CollectorRegistry
) -> None:
    a_cfg = RouterConfig(hosts=cluster.dsns(), name="a", check_interval=0.1)
    b_cfg = RouterConfig(hosts=cluster.dsns(), name="b", check_interval=0.1)
    async with SessionRouter(a_cfg) as a, SessionRouter(b_cfg) as b:
        instrument(a, registry)
        assert instrument(a, registry) is instrument(a, registry)  # idempotent
        instrument(b, registry)
        async with SessionRouter(a_cfg) as a2:
            with pytest.raises(ValueError, match="already instrumented"):
                instrument(a2, registry)
        with serve([a, b], port=0, registry=registry) as server:
            result = await scrape(server.url)
            assert {s.labels["router"] for s in result.samples("pgsessions_host_up")} == {"a", "b"}
            assert len(result.samples("pgsessions_host_up")) == 6
            status, body = await healthz(server.url)
            assert status == 200 and set(body["routers"]) == {"a", "b"}  # type: ignore[arg-type]
            uninstrument(b, registry)
            result = await scrape(server.url)
            assert {s.labels["router"] for s in result.samples("pgsessions_host_up")} == {"a"}
        # the default registry too: two names, no clash
        instrument(a)
        instrument(b)
        uninstrument(a)
        uninstrument(b)


async def test_a_new_router_replaces_a_closed_one_of_the_same_name(
    router_config: RouterConfig, registry: CollectorRegistry
) -> None:
    async with SessionRouter(router_config) as first:
        m1 = instrument(first, registry)
    async with SessionRouter(router_config) as second:
        m2 = instrument(second, registry)
        assert m2 is not m1 and m1.detached
        with serve(second, port=0, registry=registry) as server:
            assert len((await scrape(server.url)).samples("pgsessions_host_up")) == 3


# ---------------------------------------------------------------------------- pool waiting
async def test_pool_waiting_rises_when_requests_outnumber_connections(
    cluster: LocalCluster, registry: CollectorRegistry, schema: str
) -> None:
    config = RouterConfig(
        hosts=cluster.dsns(),
        schema=schema,
        name="small-pools",
        check_interval=0.1,
        primary_pool_min=1,
        primary_pool_max=2,
        replica_pool_min=1,
        replica_pool_max=2,
        no_replica_policy="primary",
        # reads started together would share one checkout: each must take a connection
        coalesce_reads=False,
    )
    async with SessionRouter(config) as router:
        with serve(router, port=0, registry=registry) as server:

            async def hold() -> None:
                await router.execute_read("get_items", None, "SELECT pg_sleep(1.5)")

            tasks = [asyncio.create_task(hold()) for _ in range(16)]
            seen: dict[str, float] = {}

            async def waiting() -> bool:
                result = await scrape(server.url)
                for s in result.samples("pgsessions_pool_requests_waiting"):
                    seen[s.labels["host"]] = max(seen.get(s.labels["host"], 0), s.value)
                return any(v >= 1 for v in seen.values())

            try:
                assert await apoll(waiting, within=10), f"no pool ever had waiters: {seen}"
                busy = await scrape(server.url)
                host = max(seen, key=lambda h: seen[h])
                assert (busy.value("pgsessions_pool_size", host=host) or 0) <= 2
            finally:
                await asyncio.gather(*tasks, return_exceptions=True)

            async def drained() -> bool:
                result = await scrape(server.url)
                return all(s.value == 0 for s in result.samples("pgsessions_pool_requests_waiting"))

            assert await apoll(drained, within=10)


# ---------------------------------------------------------------------------- ASGI app
async def asgi_get(
    app: Any, path: str, root_path: str = "", method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "path": path,
        "root_path": root_path,
        "query_string": b"",
        "headers": [(b"accept", b"text/plain")],
    }
    await app(scope, receive, send)
    start, body = sent[0], sent[1]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, body["body"]


async def test_asgi_app(router: SessionRouter, registry: CollectorRegistry) -> None:
    app = metrics_app(router, registry=registry)
    status, headers, body = await asgi_get(app, "/metrics")
    assert status == 200 and b"pgsessions_host_up{" in body
    assert headers["content-type"].startswith("text/plain")
    status, _, body = await asgi_get(app, "/ops/healthz", root_path="/ops")  # mounted
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert (await asgi_get(app, "/elsewhere"))[0] == 404
    assert (await asgi_get(app, "/metrics", method="POST"))[0] == 405


async def test_asgi_app_mounted_in_starlette_under_uvicorn(
    router: SessionRouter, registry: CollectorRegistry
) -> None:
    """Mounted in a real Starlette app served by a real uvicorn server."""
    starlette_routing = pytest.importorskip("starlette.routing")
    starlette_apps = pytest.importorskip("starlette.applications")
    uvicorn = pytest.importorskip("uvicorn")
    from pgsessions.devcluster.ports import pick_free_port

    web = starlette_apps.Starlette(
        routes=[starlette_routing.Mount("/ops", app=metrics_app(router, registry=registry))]
    )
    port = pick_free_port()
    server = uvicorn.Server(uvicorn.Config(web, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        assert await apoll(lambda: _true(server.started), within=10)
        base = f"http://127.0.0.1:{port}/ops"
        result = await asyncio.to_thread(scrape_sync, base)
        assert len(result.samples("pgsessions_host_up")) == 3
        assert (await healthz(base))[0] == 200
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def _true(value: bool) -> bool:
    return value


# ---------------------------------------------------------------------------- promtool
async def test_promtool_accepts_our_exposition(
    router: SessionRouter, served: str, promtool: str
) -> None:
    table = await make_table(router)
    await workload(router, table)
    text = (await scrape(served)).text
    proc = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stdout + proc.stderr


def test_promtool_checks_the_alert_rules(promtool: str) -> None:
    proc = subprocess.run(
        [promtool, "check", "rules", str(DEPLOY / "alerts.yml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 11 rules found" in proc.stdout


ALERT_CASES: list[tuple[str, list[tuple[str, str]], str, list[dict[str, str]]]] = [
    # (alert, input series, eval time, expected alerts' labels besides severity)
    (
        "PgsessionsReplicaLagHigh",
        [
            ('pgsessions_replication_lag_bytes{%s,host="db2:5432"}', "0 0 50000000x12"),
            ('pgsessions_replication_lag_bytes{%s,host="db3:5432"}', "0x14"),
        ],
        "3m",
        [{"host": "db2:5432"}],
    ),
    (
        "PgsessionsNoEligibleReplica",
        [
            ('pgsessions_replica_eligible{%s,host="db2:5432"}', "1 0x14"),
            ('pgsessions_replica_eligible{%s,host="db3:5432"}', "0x15"),
            ("pgsessions_primary_known{%s}", "1x15"),
        ],
        "3m",
        [{}],
    ),
    ("PgsessionsPrimaryUnknown", [("pgsessions_primary_known{%s}", "1 0x10")], "2m", [{}]),
    (
        "PgsessionsFailover",
        [("pgsessions_failovers_total{%s}", "0 0 1x10")],
        "1m",
        [{"job": "pgsessions"}],
    ),
    ("PgsessionsSplitBrain", [("pgsessions_writable_hosts{%s}", "1 2x5")], "1m", [{}]),
    (
        "PgsessionsPoolSaturated",
        [('pgsessions_pool_requests_waiting{%s,host="db1:5432",role="primary"}', "0 3x10")],
        "2m",
        [{"host": "db1:5432"}],
    ),
    (
        # failing: failures go on and segments wait; db2 failed once and caught up (no alert)
        "PgsessionsWalArchivingFailing",
        [
            ('pgsessions_archive_failed_total{%s,host="db1:5432"}', "0+2x40"),
            ('pgsessions_archive_pending_segments{%s,host="db1:5432"}', "0 0 3x40"),
            ('pgsessions_archive_last_archived_age_seconds{%s,host="db1:5432"}', "0+15x40"),
            ('pgsessions_archive_failed_total{%s,host="db2:5432"}', "0 1x40"),
            ('pgsessions_archive_pending_segments{%s,host="db2:5432"}', "0x40"),
            ('pgsessions_archive_last_archived_age_seconds{%s,host="db2:5432"}', "0+15x40"),
        ],
        "7m",
        [{"host": "db1:5432"}],
    ),
    (
        # stuck without failures (a hung archive_command): segments wait, nothing archived
        "PgsessionsWalArchivingFailing",
        [
            ('pgsessions_archive_failed_total{%s,host="db1:5432"}', "0x80"),
            ('pgsessions_archive_pending_segments{%s,host="db1:5432"}', "0 2x80"),
            ('pgsessions_archive_last_archived_age_seconds{%s,host="db1:5432"}', "0+15x80"),
        ],
        "16m",
        [{"host": "db1:5432"}],
    ),
    (
        # a move copying for over an hour; another one's short phase does not fire
        "PgsessionsMoveStuck",
        [
            (
                'pgsessions_move_phase_seconds{%s,shard="s1",target="s2",phase="copying"}',
                "0+15x300",
            ),
            ('pgsessions_move_phase_seconds{%s,shard="s3",target="s2",phase="flipped"}', "0+15x20"),
        ],
        "62m",
        [{"shard": "s1", "target": "s2", "phase": "copying"}],
    ),
    (
        "PgsessionsMoveFencedTooLong",
        [('pgsessions_move_phase_seconds{%s,shard="s1",target="s2",phase="fenced"}', "0+15x10")],
        "2m",
        [{"shard": "s1", "target": "s2"}],
    ),
    (
        # s1 -> s2's lag grows past 16 MiB; s1 -> s3's is large but steady
        "PgsessionsMoveLagGrowing",
        [
            ('pgsessions_move_lag_bytes{%s,shard="s1",target="s2"}', "0+2000000x80"),
            ('pgsessions_move_lag_bytes{%s,shard="s1",target="s3"}', "50000000x80"),
        ],
        "15m",
        [{"shard": "s1", "target": "s2"}],
    ),
    (
        # a leftover slot for 15 minutes; a leftover publication retains no WAL
        "PgsessionsMoveLeftoverSlot",
        [
            ('pgsessions_move_leftovers{%s,shard="s1",kind="slot"}', "0 1x80"),
            ('pgsessions_move_leftovers{%s,shard="s2",kind="publication"}', "1x80"),
        ],
        "17m",
        [{"shard": "s1"}],
    ),
]


def test_alert_rules_fire_as_documented(promtool: str, tmp_path: Path) -> None:
    """promtool rule unit tests drive each alert with series (annotations left out)."""
    yaml = pytest.importorskip("yaml", reason=NEED_YAML)
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    severities = {}
    for rule in rules["groups"][0]["rules"]:
        severities[rule["alert"]] = rule["labels"]["severity"]
        rule.pop("annotations")
    (tmp_path / "alerts.yml").write_text(json.dumps(rules))
    base = 'instance="agent1:9464",job="pgsessions",router="default"'
    tests = []
    for alert, series, at, expected in ALERT_CASES:
        tests.append(
            {
                "interval": "15s",
                "input_series": [{"series": s % base, "values": v} for s, v in series],
                "alert_rule_test": [
                    {
                        "eval_time": at,
                        "alertname": alert,
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "instance": "agent1:9464",
                                    "router": "default",
                                    "severity": severities[alert],
                                    **labels,
                                }
                            }
                            for labels in expected
                        ],
                    },
                    # and none of the alerts fires on a healthy start
                    {"eval_time": "0s", "alertname": alert, "exp_alerts": []},
                ],
            }
        )
    (tmp_path / "alerts_test.yml").write_text(
        json.dumps({"rule_files": ["alerts.yml"], "evaluation_interval": "15s", "tests": tests})
    )
    proc = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alerts_of_one_shard_name_that_shard(promtool: str, tmp_path: Path) -> None:
    """Two shards of one ShardedRouter: shard s2 loses its primary and fails over; the alerts
    carry shard="s2" (and say so in their summary), s1 raises none."""
    (tmp_path / "alerts.yml").write_text((DEPLOY / "alerts.yml").read_text())
    base = 'instance="agent1:9464",job="pgsessions",router="{0}",shard="{0}"'
    s1, s2 = base.format("s1"), base.format("s2")
    tests = [
        {
            "interval": "15s",
            "input_series": [
                {"series": f"pgsessions_primary_known{{{s1}}}", "values": "1x15"},
                {"series": f"pgsessions_primary_known{{{s2}}}", "values": "1 0x10 1x4"},
                {"series": f"pgsessions_failovers_total{{{s1}}}", "values": "0x15"},
                {"series": f"pgsessions_failovers_total{{{s2}}}", "values": "0x11 1x4"},
            ],
            "alert_rule_test": [
                {
                    "eval_time": "2m",
                    "alertname": "PgsessionsPrimaryUnknown",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "instance": "agent1:9464",
                                "router": "s2",
                                "shard": "s2",
                                "severity": "critical",
                            },
                            "exp_annotations": {
                                "summary": "No writable primary is known in shard s2: writes "
                                "are failing",
                            },
                        }
                    ],
                },
                {
                    "eval_time": "3m30s",
                    "alertname": "PgsessionsFailover",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "instance": "agent1:9464",
                                "job": "pgsessions",
                                "router": "s2",
                                "shard": "s2",
                                "severity": "info",
                            },
                        }
                    ],
                },
            ],
        }
    ]
    yaml = pytest.importorskip("yaml", reason=NEED_YAML)
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    by_name = {r["alert"]: r for r in rules["groups"][0]["rules"]}
    for r in by_name.values():  # every rule groups by shard (or keeps every label)
        expr = " ".join(r["expr"].split())
        for clause in ("by (", "on ("):
            for grouping in expr.split(clause)[1:]:
                assert "shard" in grouping.split(")")[0], (r["alert"], expr)
    # the summary and description are checked for PgsessionsPrimaryUnknown only
    for name, r in by_name.items():
        if name != "PgsessionsPrimaryUnknown":
            r.pop("annotations")
        else:
            r["annotations"] = {"summary": r["annotations"]["summary"]}
    (tmp_path / "alerts.yml").write_text(json.dumps(rules))
    (tmp_path / "alerts_test.yml").write_text(
        json.dumps({"rule_files": ["alerts.yml"], "evaluation_interval": "15s", "tests": tests})
    )
    proc = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dashboard_filters_and_splits_by_shard() -> None:
    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    shard = variables["shard"]
    assert shard["includeAll"] and shard["allValue"] == ".*"  # .* also matches no label
    assert "shard)" in shard["query"]["query"]
    for panel in dash["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for sel in re.findall(r"\{[^}]*\}", expr):
                assert 'shard=~"$shard"' in sel, (panel["title"], expr)
            # every aggregation keeps the shard, and the legend names it
            for by in re.findall(r"\b(?:sum|min|max|count)\s*(by \([^)]*\))?\s*\(", expr):
                assert by.startswith("by (shard"), (panel["title"], expr)
            assert "{{shard}}" in target["legendFormat"], panel["title"]


def test_alerts_have_runbooks_and_cover_the_issue() -> None:
    yaml = pytest.importorskip("yaml", reason=NEED_YAML)
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    assert names == {
        "PgsessionsReplicaLagHigh",
        "PgsessionsNoEligibleReplica",
        "PgsessionsPrimaryUnknown",
        "PgsessionsFailover",
        "PgsessionsSplitBrain",
        "PgsessionsPoolSaturated",
        "PgsessionsWalArchivingFailing",
        "PgsessionsMoveStuck",
        "PgsessionsMoveFencedTooLong",
        "PgsessionsMoveLagGrowing",
        "PgsessionsMoveLeftoverSlot",
    }
    for r in rules:
        assert len(r["annotations"]["runbook"]) > 80, r["alert"]
        assert r["annotations"]["summary"] and r["labels"]["severity"]


def test_prometheus_config_is_valid(promtool: str) -> None:
    proc = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------- dashboard
def dashboard_exprs() -> Iterator[tuple[str, str]]:
    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    for panel in dash["panels"]:
        for target in panel["targets"]:
            yield panel["title"], target["expr"]


def concrete(expr: str) -> str:
    """A dashboard query with Grafana's variables filled in."""
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$__range", "1h")
        .replace("$instance", ".*")
        .replace("$router", ".*")
        .replace("$shard", ".*")
    )


def test_dashboard_panels_cover_the_issue_and_use_our_metrics(
    promtool: str, tmp_path: Path
) -> None:
    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for topic in (
        "lag (bytes)",
        "lag (seconds)",
        "eligible",
        "role and reason",
        "p50 / p99",
        "pool usage",
        "pool waiting",
        "retries",
        "failovers",
        "wal archiving",
        "moves in progress",
        "move phase age",
        "move replication lag",
        "redirects per operation",
        "leftover move slots",
    ):
        assert topic in titles, topic
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    known = {s.name for s in METRICS}
    series_suffixes = ("_bucket", "_sum", "_count")
    for title, expr in dashboard_exprs():
        for name in re.findall(r"pgsessions_\w+", expr):
            base = next((name[: -len(x)] for x in series_suffixes if name.endswith(x)), name)
            assert name in known or base in known, f"{title}: unknown metric {name}"
    # every query is valid PromQL: promtool parses them as recording rules
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:q{i}", "expr": concrete(e)}
                    for i, (_, e) in enumerate(dashboard_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    proc = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------- compose
def test_compose_file_names_the_services_and_replicates_like_devcluster(
    cluster: LocalCluster,
) -> None:
    yaml = pytest.importorskip("yaml", reason=NEED_YAML)
    compose = yaml.safe_load((ROOT / "docker-compose.replica.yml").read_text())
    services = compose["services"]
    assert {"primary", "replica1", "replica2", "prometheus", "demo"} <= set(services)
    for name in ("primary", "replica1", "replica2"):
        svc = services[name]
        assert svc["image"].startswith("postgres:")
        assert svc["healthcheck"]["test"]
        assert svc["ports"]
        volume = svc["volumes"][0].split(":")[0]
        assert volume in compose["volumes"], f"{name}: not a named volume"
    entry = (ROOT / "deploy/compose/replica-entrypoint.sh").read_text()
    assert "pg_basebackup" in entry and '-h "$PRIMARY_HOST"' in entry and "-R" in entry
    for name in ("replica1", "replica2"):
        svc = services[name]
        assert svc["environment"]["PRIMARY_HOST"] == "primary"
        assert svc["environment"]["REPLICA_NAME"] == name
        assert svc["depends_on"]["primary"]["condition"] == "service_healthy"
        assert any("replica-entrypoint.sh" in v for v in svc["volumes"])
    init = (ROOT / "deploy/compose/init-primary.sh").read_text()
    for name in ("replica1", "replica2"):
        assert f"pg_create_physical_replication_slot('{name}'" in init

    # the replication settings are devcluster's (read from the running cluster's config)
    conf = (cluster.primary.data_dir / "postgresql.conf").read_text()
    dev = dict(
        re.findall(r"^(\w+) = '?([^'\n]*)'?$", conf.split("# pgsessions devcluster", 1)[1], re.M)
    )
    # every devcluster setting except those about the local machine (addresses, sockets,
    # memory, fsync, logging): a replication setting added to devcluster must reach compose
    local_only = {
        "listen_addresses",
        "unix_socket_directories",
        "shared_buffers",
        "fsync",
        "log_line_prefix",
        "log_min_messages",
        "include_if_exists",
    }
    keys = [k for k in dev if k not in local_only]
    assert {"wal_level", "hot_standby_feedback", "wal_log_hints", "synchronous_commit"} <= set(keys)
    for name in ("primary", "replica1", "replica2"):
        cmd = services[name]["command"]
        settings = dict(cmd[i + 1].split("=", 1) for i, a in enumerate(cmd) if a == "-c")
        for key in keys:
            assert settings.get(key) == dev[key], f"{name}: {key}={settings.get(key)} vs {dev[key]}"
        assert settings["synchronous_standby_names"] == ""

    prom = services["prometheus"]
    mounts = " ".join(prom["volumes"])
    assert "deploy/alerts.yml" in mounts and "deploy/prometheus.yml" in mounts
    demo = services["demo"]
    hosts = demo["environment"]["PGSESSIONS_HOSTS"]
    assert all(f"@{h}:5432/" in hosts for h in ("primary", "replica1", "replica2"))
    scrape_cfg = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = scrape_cfg["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["demo:9464"] and "9464:9464" in demo["ports"]
    command = " ".join(demo["command"])
    assert "pgsessions demo" in command and "--metrics-host 0.0.0.0" in command
    assert "--metrics-port 9464" in command and "--duration 0" in command


# ---------------------------------------------------------------------------- CLI
def test_cli_parser_has_serve_metrics() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_serve_metrics_command(sub)
    args = parser.parse_args(["serve-metrics", "--hosts", "postgresql://a", "--port", "9999"])
    assert args.hosts == ["postgresql://a"] and args.port == 9999 and args.host == "127.0.0.1"
    assert callable(args.func)


def test_cli_serve_metrics_serves(cluster: LocalCluster) -> None:
    """`serve-metrics` serves until SIGTERM, then exits cleanly.

    The command is built alone (as pgsessions/cli.py builds it, SIGTERM unwinding like
    Ctrl-C) so that this test does not depend on the other areas' commands.
    """
    import os
    import signal
    import sys

    from pgsessions.devcluster.ports import pick_free_port

    port = pick_free_port()
    code = (
        "import argparse, signal, sys\n"
        "from pgsessions.cli.serve_metrics import add_serve_metrics_command\n"
        "def stop(*_): raise KeyboardInterrupt\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "p = argparse.ArgumentParser(prog='pgsessions')\n"
        "add_serve_metrics_command(p.add_subparsers())\n"
        "a = p.parse_args(sys.argv[1:])\n"
        "try:\n    sys.exit(a.func(a))\nexcept KeyboardInterrupt:\n    sys.exit(130)\n"
    )
    cmd = [sys.executable, "-c", code, "serve-metrics", "--hosts", *cluster.dsns()]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port), "--name", "cli"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PGSESSIONS_HOSTS": ""},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                result = scrape_sync(url)
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "serve-metrics never answered"
                time.sleep(0.1)
        assert len(result.samples("pgsessions_host_up", router="cli")) == 3
        assert get_sync(f"{url}/healthz")[0] == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode in (0, 130), err
        assert f"{url}/metrics" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# DESIGN.md "Metrics", copied by hand: the code's METRICS table must not drift from it
DESIGN_METRICS: dict[str, tuple[str, set[str]]] = {
    "pgsessions_pool_size": ("gauge", {"host"}),
    "pgsessions_pool_available": ("gauge", {"host"}),
    "pgsessions_pool_requests_waiting": ("gauge", {"host"}),
    "pgsessions_pool_connections_lost_total": ("counter", {"host"}),
    "pgsessions_pool_wait_seconds": ("histogram", {"host"}),
    "pgsessions_host_up": ("gauge", {"host", "role"}),
    "pgsessions_replica_eligible": ("gauge", {"host"}),
    "pgsessions_replication_lag_bytes": ("gauge", {"host"}),
    "pgsessions_replication_lag_seconds": ("gauge", {"host"}),
    "pgsessions_routed_total": ("counter", {"operation", "role", "reason"}),
    "pgsessions_operation_duration_seconds": ("histogram", {"operation", "role"}),
    "pgsessions_operation_errors_total": ("counter", {"operation", "error"}),
    "pgsessions_retries_total": ("counter", {"operation", "reason"}),
    "pgsessions_failovers_total": ("counter", set()),
    "pgsessions_failover_duration_seconds": ("histogram", set()),
    "pgsessions_split_brain_total": ("counter", set()),
}


def test_metric_table_matches_the_design_contract() -> None:
    """Every metric DESIGN.md names exists with its exact name, type and at least its
    labels (extra labels allowed: ``role`` on pool metrics; ``router`` is added per router);
    nothing carries a session id or a DSN as a label."""
    specs = {s.name: s for s in METRICS}
    for name, (typ, labels) in DESIGN_METRICS.items():
        assert name in specs, f"{name} (DESIGN.md) missing"
        assert specs[name].type == typ, (name, specs[name].type)
        assert labels <= set(specs[name].labels), (name, specs[name].labels)
    for s in METRICS:
        assert s.name.startswith("pgsessions_")
        assert not {"session_id", "session", "dsn", "user", "password"} & set(s.labels), s
