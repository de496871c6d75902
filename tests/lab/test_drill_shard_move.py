"""The bucket-move drill through the CLI (``pgsessions drill shard-move``): two shards, a
third added and rebalanced onto while the ledger workload writes; the report's counts are 0
and the moves happened with writers on the moving buckets."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pgsessions.drills.shard_move import BUCKETS, percentile, spread_sessions
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


@pytest.mark.parametrize("kill", [None, "copying", "fenced", "flipped"])
def test_shard_move_drill_through_the_cli(kill: str | None) -> None:
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
            *(["--kill-mover", kill] if kill else []),
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
    assert r["move_count"] == len(r["moves"]) >= 1
    assert r["rows_moved"] > 0 and r["leftovers"] == []
    assert r["write_pause"]["moves_measured"] >= 1
    assert r["write_pause"]["p99_s"] < 1.0 and r["write_pause"]["max_s"] < 2.0
    assert all(m["seconds"] > 0 for m in r["moves"])
    k = r["mover_killed"]
    if kill:  # killed mid-copy (a real SIGKILL), left in progress, resumed by the next run
        assert k["exit_status"] == -9 and k["phase"] == kill
        assert k["in_progress_after_kill"] and k["in_progress_after_kill"] == k["resumed"]
    else:
        assert k is None
