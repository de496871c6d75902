"""Each drill scenario on a cluster of its own: the invariants hold, and the drill can fail."""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import sys
from typing import Any

import pytest

from pgsessions.drills import SCENARIOS, DrillOptions, run_drill

pytestmark = pytest.mark.fault


def drill(scenario: str, **kw: Any) -> dict[str, Any]:
    lines: list[str] = []
    opts = DrillOptions(
        scenarios=[scenario],
        fsync=False,
        sessions=12,
        warmup=1.5,
        hold=1.5,
        after=0.5,
        log=lines.append,
        **kw,
    )
    (report,) = asyncio.run(run_drill(opts))
    report["log"] = lines
    return report


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_scenario_holds_every_invariant(scenario: str) -> None:
    r = drill(scenario, sync=True)
    assert r["passed"], (r["failures"], r["log"])
    assert r["lost"] == r["duplicated"] == r["reordered"] == r["torn"] == r["stale_reads"] == 0
    assert r["recovered"]
    assert r["writes"]["acknowledged"] > 0 and r["reads"]["ok"] > 0
    assert r["timings"]["fault_at_s"] > 0
    if scenario in ("primary-crash", "switchover"):
        assert r["timings"]["promotion_to_first_write_s"] is not None
        assert r["verified_on"] != "node1"  # the promoted replica holds the data now
    if scenario == "split-brain":
        assert r["timings"]["promotion_to_first_write_s"] is None  # a rogue, not a failover


def test_async_primary_crash_loss_is_explained() -> None:
    r = drill("primary-crash", sync=False)
    # asynchronous replication may lose acknowledged writes, but only those the promoted
    # replica had not received; everything else must hold
    assert r["lost"] == r["lost_explained"], r["failures"]
    assert r["passed"], r["failures"]


def test_drop_batch_is_reported_as_lost() -> None:
    r = drill("replica-crash", break_router="drop-batch")
    assert not r["passed"]
    assert r["lost"] > 0
    assert any("lost" in f for f in r["failures"])


def test_skipping_the_token_check_fails_the_drill() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pgsessions",
            "drill",
            "replica-lag",
            "--json",
            "--no-fsync",
            "--sessions",
            "12",
            "--warmup",
            "1.5",
            "--hold",
            "2",
            "--after",
            "0.5",
            "--break-router",
            "skip-token-check",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["passed"] is False
    (r,) = report["scenarios"]
    assert r["stale_reads"] > 0
    assert r["stale_examples"][0]["served_by"].endswith("(replica)")


def test_plot_draws_the_timeline_of_a_real_drill(tmp_path: Any) -> None:
    pytest.importorskip("matplotlib")  # the `plot` extra; installed in CI (see README)
    png = tmp_path / "drill.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pgsessions",
            "drill",
            "switchover",
            "--sync",
            "--no-fsync",
            "--sessions",
            "8",
            "--warmup",
            "1",
            "--hold",
            "1",
            "--after",
            "0.5",
            "--plot",
            str(png),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert f"timeline written to {png}" in proc.stdout + proc.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 1000 and height > 200  # one row of three panels
