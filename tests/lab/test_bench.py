"""Smoke test of the benchmark harness: every contender runs about a second on the test
cluster; the output shape and the correctness guard are checked, never the speed."""

from __future__ import annotations

import importlib.util
import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pgsessions
from bench import WORKLOADS
from bench.cli import build_parser, config_from_args
from bench.contenders import (
    BenchEnv,
    Contender,
    FloorContender,
    FloorSession,
    default_contenders,
)
from bench.fleet import FleetConfig, render, run_fleet
from bench.harness import NO_SESSION, BenchConfig, check_history, percentile
from bench.payloads import Payloads, check_seeded_tail
from bench.report import (
    cpu_profile_lines,
    render_markdown,
    render_text,
    targets,
    wal_record_lines,
)
from bench.run import run_bench
from bench.wal import lsn_text, parse_waldump_stats
from pgsessions.devcluster import LocalCluster


def _env(cluster: LocalCluster, tmp_path: Path) -> BenchEnv:
    return BenchEnv(
        primary_dsn=cluster.primary.dsn,
        replica_dsns=[r.dsn for r in cluster.replicas],
        workdir=tmp_path,
        prefix=f"bt_{uuid.uuid4().hex[:8]}",
        pool_size=4,
    )


def _expected_to_run() -> set[str]:
    names = {"raw-floor", "sqlite-file"}
    if importlib.util.find_spec("sqlalchemy") and importlib.util.find_spec("asyncpg"):
        names.add("sqlalchemy")
    if hasattr(pgsessions, "PostgresSession") and hasattr(pgsessions, "migrate"):
        names |= {"pgsessions-routed", "pgsessions-primary"}
    return names


async def test_every_contender_runs_and_passes_the_guard(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    cfg = BenchConfig(
        duration=0.2,
        rounds=1,
        warmup=0.05,
        turn_sessions=(4,),
        history_sizes=(100, 1000),
        history_readers=2,
        read_heavy_sessions=4,
        runner_sessions=2,
        agent_sessions=6,
        agent_duration=0.6,
        agent_pause=(0.01, 0.05),
        wal_adds=20,
    )
    results = await run_bench(_env(cluster, tmp_path), cfg, log=lambda _: None)

    status = {c["name"]: c for c in results["contenders"]}
    assert set(status) == {c.name for c in default_contenders()}
    ran = {n for n, c in status.items() if c["status"] != "skipped"}
    assert ran == _expected_to_run()
    for name in ran:
        assert status[name]["status"] == "ok", status[name]

    assert set(results["workloads"]) == {
        "turn",
        "adds",
        "history",
        "read-heavy",
        "runner",
        "threads",
        "agent",
    }
    assert [b["param"] for b in results["workloads"]["history"]] == [100, 1000]
    agent_names = ran & {"pgsessions-routed", "pgsessions-primary", "sqlalchemy"}
    for workload, blocks in results["workloads"].items():
        for block in blocks:
            names = {c["contender"] for c in block["cells"]}
            want = {
                "runner": ran | {NO_SESSION},
                "agent": agent_names,
                "threads": {"tasks", "threads"},
                "adds": ran & {"pgsessions-routed", "raw-floor"},
            }.get(workload, ran)
            assert names == want
            for c in block["cells"]:
                assert c["ok"], c
                assert c["ops_per_s"] > 0 and c["p99_ms"] >= c["p50_ms"] > 0
                assert len(c["rounds"]) == 1
                assert "tput_vs_routed" in c
    # WAL per add: both stores wrote something, the ratio is theirs
    wal = results["wal"]
    assert wal["pgsessions_bytes_per_add"] > 0 and wal["floor_bytes_per_add"] > 0
    assert len(wal["rounds"]) == 5
    # the agent workload: every read of the routed contender counted, on the primary-only
    # one none on a replica; the primary's CPU read from /proc (a local cluster)
    agent = {c["contender"]: c for c in results["workloads"]["agent"][0]["cells"]}
    assert agent["pgsessions-primary"]["replica_read_share"] == 0
    assert sum(agent["pgsessions-routed"]["reads_routed"].values()) > 0
    for c in agent.values():
        assert c["primary_cpu_s_per_1000"] is not None and c["primary_cpu_s_per_1000"] > 0
    # concurrent adds: the primary's CPU and WAL per add, both stores, and what that WAL is
    # made of (pg_waldump on the local cluster): every add inserts message rows
    for c in results["workloads"]["adds"][0]["cells"]:
        assert c["primary_cpu_s_per_1000"] is not None and c["primary_cpu_s_per_1000"] > 0
        assert c["wal_bytes_per_op"] is not None and c["wal_bytes_per_op"] > 0
        records = c["wal_records"]
        assert records["Heap/INSERT"]["bytes"] > 0, records
        assert sum(r["bytes"] for r in records.values()) <= c["rounds"][-1]["wal_bytes_per_op"]
    # the turn's CPU by process: the client, the primary and the replicas each did work
    for c in results["workloads"]["turn"][0]["cells"]:
        if c["contender"] in ("pgsessions-routed", "raw-floor"):
            assert c["primary_cpu_s_per_1000"] > 0 and c["replicas_cpu_s_per_1000"] > 0, c
    names = [t["target"] for t in results["targets"]]
    assert len(names) == 11 and names[0].startswith("WAL bytes per add_items")
    assert any(n.startswith("adds x4: routed WAL bytes per add_items") for n in names)
    assert any(n.startswith("threads x2: run_sync client CPU") for n in names)
    assert all(t["value"] is not None for t in results["targets"]), results["targets"]
    for key in ("cpu_count", "postgresql", "load_avg_start", "load_avg_end"):
        assert key in results["machine"]
    assert results["machine"]["postgresql"]["fsync"] in ("on", "off")

    json.dumps(results)
    text, md = render_text(results), render_markdown(results)
    for name in ran:
        assert name in text and name in md
    assert "| contender |" in md
    assert "WAL bytes per add_items" in md and "primary CPU s/1000 turns" in md
    assert "CPU per op of raw-floor: client" in text and "Heap/INSERT:" in md


def test_the_fleet_runs_both_stores_from_processes(cluster: LocalCluster, tmp_path: Path) -> None:
    """`python -m bench.fleet` at a tiny size: 2 spawned processes, 20 conversations, 3 s."""
    env = _env(cluster, tmp_path)
    cfg = FleetConfig(processes=2, conversations=20, seconds=3.0, warmup=1.0, progress=1.0)
    lines: list[str] = []
    report = run_fleet(env, cfg, log=lines.append)
    want = ["pgsessions-routed"]
    if importlib.util.find_spec("sqlalchemy") and importlib.util.find_spec("asyncpg"):
        want.append("sqlalchemy")
    by_name = {c["contender"]: c for c in report["contenders"]}
    assert list(by_name) == want
    for c in by_name.values():
        assert c["failures"] == [] and c["violations"] == 0, c
        assert (c["processes"], c["conversations"]) == (2, 20)
        assert c["offered_turns_per_s"] == 16.0
        assert c["turns"] > 0 and c["achieved_turns_per_s"] > 0 and c["allowed_turns_per_s"] > 0
        assert 0 < c["add_p50_ms"] <= c["add_p99_ms"]
        assert c["add_p50_ms"] <= c["turn_p50_ms"] <= c["turn_p99_ms"]
        assert c["think_slept_mean_s"] >= 0.5 and c["client_cpu_ms_per_turn"] > 0
    pgs = by_name["pgsessions-routed"]
    assert pgs["errors"] == 0 and pgs["errors_by_type"] == {}
    assert pgs["replica_read_share"] > 0
    assert any("2 processes ready" in line for line in lines)
    assert any(" turns, " in line for line in lines)  # progress
    assert report["config"]["pool_size"] == env.pool_size
    json.dumps(report)
    assert all(name in render(report) for name in want)
    with psycopg.connect(cluster.primary.dsn) as conn:  # each store's schema dropped
        left = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (env.prefix + "%",)
        ).fetchall()
    assert left == []


class _LossyFloorSession(FloorSession):
    """Silently drops every third batch: fast and wrong."""

    calls = 0

    async def add_items(self, items: list[Any]) -> None:
        type(self).calls += 1
        if type(self).calls % 3:
            await super().add_items(items)


class _LossyFloor(FloorContender):
    name = "lossy-floor"

    def session(self, session_id: str) -> FloorSession:
        assert self._pool is not None
        return _LossyFloorSession(session_id, self._pool, self._schema)


async def test_a_fast_but_wrong_contender_is_marked_failed(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    cfg = BenchConfig(workloads=("turn",), duration=0.2, rounds=1, warmup=0, turn_sessions=(2,))
    results = await run_bench(
        _env(cluster, tmp_path), cfg, [FloorContender(), _LossyFloor()], log=lambda _: None
    )
    status = {c["name"]: c for c in results["contenders"]}
    assert status["raw-floor"]["status"] == "ok"
    assert status["lossy-floor"]["status"] == "failed"
    assert status["lossy-floor"]["reasons"]
    assert "FAILED" in render_text(results)


async def test_seeding_through_the_api_matches_server_side_seeding(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    floor = FloorContender()
    await floor.open(_env(cluster, tmp_path))
    try:
        await floor.seed("server", 1500)
        await Contender.seed(floor, "api", 1500)  # the fallback every contender inherits
        for sid in ("server", "api"):
            items = await floor.session(sid).get_items(limit=50)
            assert check_seeded_tail(items, 1500, 50) is None
    finally:
        await floor.close()
        await floor.drop()


def test_targets_report_the_median_and_the_spread_of_per_round_ratios() -> None:
    def c(name: str, values: list[float]) -> dict[str, Any]:
        rounds = [{"ops_per_s": v, "p99_ms": 10.0, "client_cpu_us_per_op": v} for v in values]
        return {"contender": name, "rounds": rounds}

    block = {
        "param": 32,
        "cells": [
            c("pgsessions-routed", [100.0, 90.0, 120.0]),
            c("raw-floor", [100.0, 100.0, 100.0]),
            c("sqlalchemy", [50.0, 45.0, 40.0]),
        ],
    }
    out = {t["target"]: t for t in targets({"workloads": {"turn": [block]}})}
    tput = out["turn x32: routed turns/s / raw floor"]
    assert tput["value"] == 1.0 and tput["rounds"] == [0.9, 1.2] and tput["met"] is False
    sqla = out["turn x32: routed turns/s / SQLAlchemySession"]
    assert sqla["value"] == 2.0 and sqla["rounds"] == [2.0, 3.0] and sqla["met"] is False
    text = render_text({"targets": list(out.values()), "workloads": {}, "contenders": []})
    assert "1.000 (rounds 0.900-1.200)" in text


# pg_waldump --stats=record output, columns narrowed (the parser splits on blanks)
WALDUMP_STATS = "\n".join(
    [
        "Type         N      (%)   Record size    (%)   FPI size    (%)   Combined size    (%)",
        "----         -      ---   -----------    ---   --------    ---   -------------    ---",
        "Transaction/COMMIT  160 ( 0.32)     5440 ( 0.03)     0 ( 0.00)     5440 ( 0.03)",
        "Heap/INSERT  1751 (35.02)  1450000 (92.50)  8192 (50.00)  1458192 (92.00)",
        "Btree/INSERT_UPPER  2 ( 0.00)  120 ( 0.00)  0 ( 0.00)  120 ( 0.00)",
        "             --------      --------      --------      --------",
        "Total  50007  15679261 [99.90%]  15984 [0.10%]  15695245 [100%]",
    ]
)


def test_waldump_statistics_per_operation() -> None:
    got = parse_waldump_stats(WALDUMP_STATS, ops=1000)
    # combined size (full-page images included) per op; types under a byte per op left out
    assert got == {
        "Transaction/COMMIT": {"records": 0.16, "bytes": 5.4},
        "Heap/INSERT": {"records": 1.751, "bytes": 1458.2},
    }
    assert lsn_text((3 << 32) + 0x1A2B) == "3/1A2B" and lsn_text(0) == "0/0"


def test_profile_lines_name_where_the_cpu_and_the_wal_went() -> None:
    def c(name: str, records: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "contender": name,
            "ops_per_s": 1000.0,
            "client_cpu_us_per_op": 500.0,
            "primary_cpu_s_per_1000": 0.25,
            "replicas_cpu_s_per_1000": 0.4 if records else None,
            "wal_records": records,
        }

    block = {
        "cells": [
            c(
                "a",
                {
                    "Heap/INSERT": {"bytes": 1500.0, "records": 1.8},
                    "Heap/LOCK": {"bytes": 59.0, "records": 1.1},
                },
            ),
            c("b", {"Heap/INSERT": {"bytes": 1520.0, "records": 1.8}}),
            c("c", None),
        ]
    }
    cpu = cpu_profile_lines(block, cores=2)
    assert cpu[0] == (
        "CPU per op of a: client 500 us, primary 250 us, replicas 400 us, total 1,150 us"
        " (1.15 of 2 cores busy)"
    )
    assert len(cpu) == 2  # c has no replica figure
    wal = wal_record_lines(block)
    # the biggest difference first; a type one contender did not write shows as "-"
    assert wal[1] == "  Heap/LOCK: a 59 (1.10), b -"
    assert wal[2] == "  Heap/INSERT: a 1,500 (1.80), b 1,520 (1.80)"
    assert wal_record_lines({"cells": [c("c", None)]}) == []


def test_guard_helpers() -> None:
    p = Payloads()
    items = p.turn("s", 0) + p.turn("s", 1)
    assert check_history(items, "s", 2) is None
    assert check_history(items[:3], "s", 2) is not None
    assert check_history(items[2:] + items[:2], "s", 2) is not None
    seeded = [
        {"role": "user" if i % 2 else "assistant", "content": f"seed-{i} x"} for i in range(1, 11)
    ]
    assert check_seeded_tail(seeded[-5:], 10, 5) is None
    assert check_seeded_tail(seeded[-6:-1], 10, 5) is not None
    assert check_seeded_tail(seeded, 10, 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.99) == 99.0
    assert percentile([], 0.5) == 0.0


@pytest.mark.parametrize("argv", [[], ["--quick"], ["--workload", "turn", "--sessions", "8,2"]])
def test_cli_options(argv: list[str]) -> None:
    cfg = config_from_args(build_parser().parse_args(argv))
    assert cfg.rounds >= 1 and cfg.duration > 0
    assert set(cfg.workloads) <= set(WORKLOADS)
    if "--sessions" in argv:
        assert cfg.workloads == ("turn",) and tuple(cfg.turn_sessions) == (8, 2)


def test_server_cpu_counts_live_and_reaped_children() -> None:
    import os
    import subprocess
    import sys
    import time

    from bench.servercpu import tree_cpu_seconds

    me = os.getpid()
    before = tree_cpu_seconds(me)
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    child = subprocess.Popen([sys.executable, "-c", burn])
    deadline = time.monotonic() + 10
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert child.wait(timeout=10) == 0
    # the reaped child's 0.3 s now count in this process's cutime
    assert tree_cpu_seconds(me) - before >= 0.25


async def test_client_backend_cpu_counts_what_a_connection_runs(
    cluster: LocalCluster,
) -> None:
    import psycopg

    from bench.servercpu import client_backends_cpu_seconds, postmaster_pid

    pid = await postmaster_pid(cluster.primary.dsn)
    assert pid is not None

    async with await psycopg.AsyncConnection.connect(cluster.primary.dsn, autocommit=True) as c:
        await c.execute("SELECT 1")
        before = client_backends_cpu_seconds(pid)
        # about 0.1-0.5 s of one backend's CPU, whatever the machine
        await c.execute("SELECT count(*) FROM generate_series(1, 3000000)")
        after = client_backends_cpu_seconds(pid)
        await c.execute("SELECT 1")
        busy, idle = after - before, client_backends_cpu_seconds(pid) - after
    assert busy > 0.05
    assert idle < busy / 10
