"""The bucket-move drill through the CLI (``pgsessions drill shard-move``): two shards, a
third added and rebalanced onto while the ledger workload writes; the report's counts are 0
and the moves happened with writers on the moving buckets."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from pgsessions.drills.ledger import Ledger
from pgsessions.drills.shard_move import (
    BUCKETS,
    lost_off_shard,
    moving_rate,
    percentile,
    spread_sessions,
)
from pgsessions.router.placement import bucket_of

pytestmark = pytest.mark.fault


def test_spread_sessions_puts_writers_in_every_planned_move() -> None:
    moves = [[1, 2, 3], [10], [40, 41]]
    sids = spread_sessions("p", 12, moves, BUCKETS)
    assert len(set(sids)) == 12 and all(s.startswith("p-") for s in sids)
    got = [bucket_of(s, BUCKETS) for s in sids]
    for batch in moves:
        assert any(b in batch for b in got), batch
    moving = {b for batch in moves for b in batch}
    assert sum(b not in moving for b in got) == 6
    assert percentile([], 0.99) == 0.0 and percentile([3.0, 1.0, 2.0], 0.5) == 2.0


def test_moving_rate_counts_the_copies_of_the_moves_copied_from_the_start() -> None:
    sizes = {1: (10, 2_000_000), 2: (30, 1_000_000), 3: (5, 5)}
    done = [
        {"buckets": [1, 2], "resumed": False, "phases": {"copied": 1.5}},
        {"buckets": [3], "resumed": True, "phases": {"copied": 9.0}},  # a part of a copy
        {"buckets": [3], "resumed": False, "phases": {}},
    ]
    assert moving_rate(done, sizes) == {
        "moves_measured": 1,
        "copy_s": 1.5,
        "mb": 3.0,
        "rows": 40,
        "mb_per_s": 2.0,
        "rows_per_s": 27,
    }
    assert moving_rate([], sizes)["mb_per_s"] is None


def test_a_loss_off_the_crashed_shard_is_not_explained_by_the_crash() -> None:
    ledger = Ledger()
    for sid, token in (("a", "s1:0/10"), ("b", "s2:0/10"), ("c", "s2:0/20"), ("d", None)):
        ledger.write_acked(ledger.write_started(sid, 1), token)
    stored = {"c": [(1, 0), (1, 1)]}  # a (on s1) lost; b (s2) and d (no token) too
    assert lost_off_shard(ledger, stored, "s1") == 2
    assert lost_off_shard(ledger, {**stored, "b": [(1, 0)], "d": [(1, 1)]}, "s1") == 0


def drill(*args: str) -> dict[str, Any]:
    """``pgsessions drill shard-move --json`` (small and fast) with ``args``: its report,
    after the checks every run of it must pass."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pgsessions",
            "drill",
            "shard-move",
            "--json",
            "--no-fsync",
            "--sessions",
            "12",
            "--warmup",
            "1.5",
            "--after",
            "0.5",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["passed"]
    (r,) = out["scenarios"]
    assert r["failures"] == []
    assert r["lost"] == r["duplicated"] == r["stale_reads"] == 0
    assert r["torn"] == r["reordered"] == r["misplaced_items"] == 0
    assert r["writes"]["failed"] == 0 and r["reads"]["failed"] == 0
    assert r["buckets_before"]["s3"] == 0 and r["buckets_after"]["s3"] > 0
    assert r["move_count"] >= 1 and r["rows_moved"] > 0 and r["leftovers"] == []
    assert r["write_pause"]["moves_measured"] >= 1
    assert r["write_pause"]["p99_s"] < 1.0 and r["write_pause"]["max_s"] < 2.0
    assert all(m["seconds"] > 0 for m in r["moves"])
    rate = r["moving_rate"]
    assert rate["moves_measured"] >= 1 and rate["rows"] > 0 and rate["mb_per_s"] > 0
    return r


@pytest.mark.parametrize("kill", [None, "copying", "fenced", "flipped"])
def test_shard_move_drill_through_the_cli(kill: str | None) -> None:
    r = drill(*(["--kill-mover", kill] if kill else []))
    assert r["move_count"] == len(r["moves"])
    k = r["mover_killed"]
    if kill:  # killed mid-copy (a real SIGKILL), left in progress, resumed by the next run
        assert k["exit_status"] == -9 and k["phase"] == kill
        assert k["in_progress_after_kill"] and k["in_progress_after_kill"] == k["resumed"]
    else:
        assert k is None


def test_a_stale_writer_paused_across_the_flips_is_refused_once_per_write_and_lands_once() -> None:
    """With 20 MB of history in the moving buckets: the rate is measured on it."""
    r = drill("--variant", "stale-writer", "--history-mb", "20")
    st = r["stale_writer"]
    n = st["sessions"]
    assert n >= 2 and st["stale_at_resume"] == n  # its directory still had the old owners
    assert st["writes_after_flip"] == st["acknowledged_after_flip"] == n
    assert st["redirects"] == n  # each write refused by the old owner, once
    assert st["landed_once_on_new_owner"] == n
    assert r["sessions"] == 12 + n  # its sessions are checked by the ledger with the others
    h = r["history"]
    assert h["mb_asked"] == 20 and 15 <= h["mb_loaded"] <= 25
    assert r["moving_rate"]["mb"] >= 15 and r["moving_rate"]["rows"] >= 15_000


def test_a_source_primary_crashed_mid_copy_stops_the_move_and_the_rebalance_ends_after_it() -> None:
    r = drill("--sync", "--variant", "source-crash")
    c = r["source_crash"]
    assert c["phase"] == "copying" and c["mover_error"]  # the mover stopped, raising
    assert c["promoted"] != c["node"]
    assert c["in_progress_after_crash"] == c["aborted"] == [c["move_id"]]
    assert c["moves_after_failover"] >= 1 and c["writes_after_promotion"] > 0
    assert c["move_id"] not in {m["move_id"] for m in r["moves"] if m["rows_moved"]}
    assert r["sync"] and r["lost"] == 0
