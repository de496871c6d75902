"""The fleet benchmark's pure parts (bench/fleet.py): the split of conversations, the
offered and allowed rates, the held decision, the merge of the workers' reports, the guard."""

from __future__ import annotations

from typing import Any

import pytest

from bench.fleet import Conversation, FleetConfig, allowed_rate, is_held, summarize
from bench.payloads import Payloads


def _report(turns: list[float], adds: list[float], **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "conversations": 10,
        "turn_latencies": turns,
        "add_latencies": adds,
        "errors": {},
        "error_samples": [],
        "violations": 0,
        "violation_samples": [],
        "think_sum": 12.5,
        "think_count": 10,
        "slept_sum": 13.0,
        "turns_done": 100,
        "cpu_s": 1.0,
        "reads_routed": None,
    }
    base.update(kw)
    return base


def test_conversations_are_split_over_the_processes() -> None:
    cfg = FleetConfig(processes=8, conversations=2000)
    assert [cfg.conversations_of(i) for i in range(8)] == [250] * 8
    odd = FleetConfig(processes=3, conversations=20)
    assert [odd.conversations_of(i) for i in range(3)] == [7, 7, 6]
    assert cfg.offered == pytest.approx(2000 / 1.25)


def test_allowed_rate_and_held() -> None:
    assert allowed_rate(2000, 1.25, 0.0) == pytest.approx(1600)
    assert allowed_rate(2000, 1.25, 1.25) == pytest.approx(800)
    assert is_held(780, 800, errors=0, violations=0, share=0.95)
    assert not is_held(750, 800, errors=0, violations=0, share=0.95)  # below 95%
    assert not is_held(800, 800, errors=1, violations=0, share=0.95)
    assert not is_held(800, 800, errors=0, violations=1, share=0.95)
    assert not is_held(0, 0, errors=0, violations=0, share=0.95)


def test_summarize_merges_the_workers() -> None:
    cfg = FleetConfig(processes=2, conversations=20, seconds=2.0)
    a = _report([0.010] * 100, [0.005] * 100)
    b = _report(
        [0.020] * 99 + [0.500],
        [0.010] * 99 + [0.400],
        errors={"TimeoutError": 2},
        error_samples=["TimeoutError: pool"],
        reads_routed={"replica/caught_up": 3, "primary/no_replica": 1},
    )
    s = summarize("x", [a, b], cfg)
    assert s["turns"] == 200 and s["achieved_turns_per_s"] == 100.0
    assert s["conversations"] == 20 and s["processes"] == 2
    assert s["offered_turns_per_s"] == 16.0
    assert s["turn_p50_ms"] == 10.0 and s["turn_p99_ms"] == 20.0  # nearest rank of 200
    assert s["add_p99_ms"] == 10.0
    assert s["errors"] == 2 and s["errors_by_type"] == {"TimeoutError": 2}
    assert s["error_samples"] == ["TimeoutError: pool"]
    assert not s["held"]  # errors
    assert s["replica_read_share"] == 0.75
    assert s["think_mean_s"] == 1.25 and s["think_slept_mean_s"] == 1.3
    assert s["client_cpu_ms_per_turn"] == 10.0  # 2 CPU seconds over 200 turns done
    # without errors, 100 turns/s for 20 conversations is well above what is allowed
    ok = summarize("x", [a, _report([0.020] * 100, [0.010] * 100)], cfg)
    assert ok["held"] and ok["allowed_turns_per_s"] == pytest.approx(20 / (1.25 + 0.015), 0.01)
    assert not summarize("x", [a, a], cfg, failures=["process 1: exited"])["held"]


def test_the_guard_wants_the_last_write_at_the_end() -> None:
    pl = Payloads()
    c = Conversation("s", None, turns=2)
    items = pl.turn("s", 0) + pl.turn("s", 1)
    assert c.check(items, 50) is None
    assert c.check(items[:3], 50) is not None  # one missing
    assert "read-your-writes" in (c.check(pl.turn("s", 0) + pl.turn("s", 0), 50) or "")
    long = Conversation("s", None, turns=30)
    tail = [it for n in range(5, 30) for it in pl.turn("s", n)]
    assert long.check(tail, 50) is None  # the limit caps the read
    assert Conversation("s", None, turns=2, uncertain=True).check([], 50) is None
