"""Drills where Patroni moves the primary: the leader's node killed under the drill workload
(synchronous_mode: nothing lost; asynchronous: any loss lies beyond the promoted member's
switch position), and the pure parts of the Patroni report and options."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import pytest

from pgsessions.cli.drill import add_drill_command, options_from_args
from pgsessions.drills import DrillOptions, run_drill
from pgsessions.drills.ledger import Event, Ledger
from pgsessions.drills.patroni_deploy import writable_windows
from pgsessions.drills.patroni_scenarios import PATRONI_SCENARIOS, patroni_failover_budget
from pgsessions.drills.report import format_scenario, format_summary


def patroni_drill(scenario: str, **kw: Any) -> dict[str, Any]:
    lines: list[str] = []
    opts = DrillOptions(
        scenarios=[scenario],
        patroni=True,
        fsync=False,
        sessions=12,
        warmup=1.5,
        hold=1.5,
        after=0.5,
        failover_timeout=patroni_failover_budget(10, 2),
        log=lines.append,
        **kw,
    )
    (report,) = asyncio.run(run_drill(opts))
    report["log"] = lines
    return report


@pytest.mark.fault
def test_leader_node_kill_loses_nothing_and_reports_patroni_timing() -> None:
    r = patroni_drill("leader-node-kill", sync=True)
    assert "patroni" in r, (r.get("error"), r["failures"], r["log"][-20:])
    assert r["passed"], (r["failures"], r["log"][-20:])
    assert r["lost"] == r["duplicated"] == r["reordered"] == r["torn"] == r["stale_reads"] == 0
    assert r["writes"]["failed"] == 0 and r["recovered"]
    p = r["patroni"]
    assert p["synchronous_mode"] is True
    assert p["promoted"] is not None and p["promoted"] != p["leader_before"]
    assert p["timeline_after"] == p["timeline_before"] + 1
    # Patroni waits for the leader key to expire (ttl 10) before it promotes anyone
    assert 2.0 < p["fault_to_promotion_s"] <= p["fault_to_first_write_s"] < 60
    assert p["fault_to_rest_leader_s"] is not None
    assert p["writes_acked_while_two_writable"] == 0
    assert r["verified_on"] == p["promoted"]
    text = format_scenario(r) + "\n" + format_summary([r])
    assert "fault -> promotion" in text and "fault->write" in text


@pytest.mark.fault
def test_async_leader_node_kill_loss_lies_beyond_the_switch_position() -> None:
    r = patroni_drill("leader-node-kill", sync=False)
    assert "patroni" in r, (r.get("error"), r["failures"], r["log"][-20:])
    assert r["patroni"]["synchronous_mode"] is False
    assert r["lost"] == r["lost_explained"], r["failures"]
    assert r["duplicated"] == r["stale_reads"] == 0
    assert r["passed"], r["failures"]


def test_two_writable_windows_from_role_events() -> None:
    ledger = Ledger()
    for t, detail in (
        (1.0, "m2: replica -> primary"),
        (1.5, "m1: primary -> replica"),
        (3.0, "m3: replica -> primary"),
        (3.2, "m3: primary -> down"),
    ):
        ledger.events.append(Event(t, "role", detail))
    assert writable_windows(ledger, "m1") == [(1.0, 1.5), (3.0, 3.2)]
    assert writable_windows(Ledger(), "m1") == []


def test_failover_budget_covers_ttl_and_loop_wait() -> None:
    # measured here: Patroni's defaults (ttl 30, loop_wait 10) promoted after up to 30.4 s
    assert patroni_failover_budget(30, 10) > 30.4 + 5
    assert patroni_failover_budget(10, 2) >= 10 + 2


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_drill_command(parser.add_subparsers())
    return parser.parse_args(["drill", *argv])


def test_patroni_options() -> None:
    opts = options_from_args(_args("--patroni", "--ttl", "30", "--loop-wait", "10"))
    assert opts.patroni and opts.scenarios == list(PATRONI_SCENARIOS)
    assert (opts.patroni_ttl, opts.patroni_loop_wait) == (30, 10)
    assert opts.failover_timeout >= 40
    assert options_from_args(_args("--patroni", "rejoin")).scenarios == ["rejoin"]
    with pytest.raises(ValueError, match="no scenario with --patroni"):
        options_from_args(_args("--patroni", "split-brain"))
    with pytest.raises(ValueError, match="no scenario without --patroni"):
        options_from_args(_args("etcd-down"))
    with pytest.raises(ValueError, match="need --patroni"):
        options_from_args(_args("--ttl", "30"))
    with pytest.raises(ValueError, match="need --patroni"):
        options_from_args(_args("--patroni-rest"))
    assert options_from_args(_args("--patroni", "--patroni-rest")).patroni_rest
    with pytest.raises(ValueError, match="ttl > loop_wait"):
        options_from_args(_args("--patroni", "--ttl", "10", "--loop-wait", "10"))
