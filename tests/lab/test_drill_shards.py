"""Drills on two shards (``pgsessions drill SCENARIO --shards 2``): each shard a replicated
cluster of its own started by the drill, the workload through one ShardedRouter, the fault in
shard s1 only; the ledger is checked over both shards, and shard s2's sessions see no error."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import pytest

from pgsessions.drills import DrillOptions, run_drill
from pgsessions.drills.ledger import Ledger
from pgsessions.drills.scenarios import DrillContext
from pgsessions.drills.shards import per_shard_reports

pytestmark = pytest.mark.fault

QUICK = ["--sessions", "12", "--warmup", "1.5", "--hold", "1.5", "--after", "0.5"]


def assert_shards_clean(r: dict[str, Any]) -> None:
    shards = r["shards"]
    assert sorted(shards) == ["s1", "s2"]
    assert shards["s1"]["faulted"] and not shards["s2"]["faulted"]
    for name, s in shards.items():
        assert s["sessions"] > 0, name  # the workload wrote on both shards
        assert s["writes_acknowledged"] > 0 and s["reads_ok"] > 0, name
        assert s["duplicated"] == s["reordered"] == s["torn"] == s["stale_reads"] == 0, name
    assert shards["s1"]["sessions"] + shards["s2"]["sessions"] == r["sessions"]
    # the untouched shard: nothing lost, not one error
    s2 = shards["s2"]
    assert s2["lost"] == s2["writes_failed"] == s2["reads_failed"] == 0, s2
    assert s2["failures"] == []
    assert r["misplaced_items"] == 0


def test_primary_crash_in_one_shard_through_the_cli() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pgsessions",
            "drill",
            "primary-crash",
            "--shards",
            "2",
            "--sync",
            "--json",
            "--no-fsync",
            *QUICK,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["passed"]
    (r,) = out["scenarios"]
    assert r["passed"], r["failures"]
    assert r["lost"] == r["duplicated"] == r["reordered"] == r["torn"] == r["stale_reads"] == 0
    assert r["recovered"]
    assert r["timings"]["promotion_to_first_write_s"] is not None
    assert_shards_clean(r)
    # s1's primary is gone: s1 was verified on its promoted replica, s2 on its own primary
    assert "s1/node1" not in r["verified_on"] and "s2/node1" in r["verified_on"]
    assert r["shards"]["s1"]["lost"] == 0


def test_async_primary_crash_in_one_shard_explains_any_loss_by_that_shard() -> None:
    """Asynchronous replication: shard s1 may lose acknowledged batches its promoted replica
    had not received (their sharded tokens name s1), shard s2 loses nothing."""
    lines: list[str] = []
    opts = DrillOptions(
        scenarios=["primary-crash"],
        shards=2,
        fsync=False,
        sessions=12,
        warmup=1.5,
        hold=1.5,
        after=0.5,
        log=lines.append,
    )
    (r,) = asyncio.run(run_drill(opts))
    assert r["passed"], (r["failures"], lines[-20:])
    assert r["lost"] == r["lost_explained"] == r["shards"]["s1"]["lost"]
    assert_shards_clean(r)


def test_an_error_on_the_untouched_shard_fails_the_drill() -> None:
    """The per-shard judgement itself: one failed read of a session on s2 is a failure."""
    ledger = Ledger()
    ctx = DrillContext(ledger=ledger, log=lambda line: None, sync=True)
    for sid in ("a", "b"):
        w = ledger.write_started(sid, 1)
        ledger.write_acked(w, f"{'s1' if sid == 'a' else 's2'}:0/1000")
    ledger.event("fault", "crash")
    ledger.read_failed(ledger.read_started("b"), ConnectionError("reset"))
    stored = {"a": [(1, 0), (1, 1)], "b": [(1, 0), (1, 1)]}
    shards, failures = per_shard_reports(
        ledger,
        stored,
        ctx,
        {"a": "s1", "b": "s2"},
        recovered=True,
        host_names={},
        failover_timeout=10.0,
    )
    assert shards["s2"]["reads_failed"] == 1 and shards["s1"]["reads_failed"] == 0
    assert failures == ["shard s2 (not faulted): 0 writes and 1 reads failed"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--patroni"], "--shards starts its own local clusters"),
        (["--break-router", "drop-batch"], "leave --shards out"),
        (["--sessions", "3"], "needs --sessions >= 4"),
    ],
)
def test_shards_refuses_what_it_cannot_run(extra: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pgsessions", "drill", "primary-crash", "--shards", "2", *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
