"""The move gauges from a check's answer, and the redirect counter, without PostgreSQL (the
same on real clusters: tests/lab/test_move_metrics.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from pgsessions.monitoring import MoveWatch, instrument
from pgsessions.monitoring.collector import collector_for
from pgsessions.monitoring.moves import _Move, _ShardState
from pgsessions.router import ShardedRouter


def _router() -> ShardedRouter:
    return ShardedRouter(
        {n: f"postgresql://db-{n}:5432/app" for n in ("s1", "s2", "s3")}, buckets=16
    )


def _samples(watch: MoveWatch) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in watch.families():
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def _key(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def test_no_check_yet_reports_nothing() -> None:
    watch = MoveWatch(_router())
    assert all(not fam.samples for fam in watch.families())


def test_a_move_in_progress_its_lag_and_the_leftovers_of_no_move() -> None:
    router = _router()
    watch = MoveWatch(router)
    watch._state = {
        "s1": _ShardState(
            True,
            [_Move("m1", "s2", "fenced", 2.5, 4096)],
            [
                ("slot", "pgs_move_m1", 8192),
                ("publication", "pgs_move_m1", None),
                ("slot", "pgs_move_old", 1000),
                ("publication", "pgs_move_old", None),
            ],
        ),
        "s2": _ShardState(True, [], [("subscription", "pgs_move_m1", None)]),
        "s3": _ShardState(False),
    }
    got = _samples(watch)
    s1 = {"router": "s1", "shard": "s1"}
    s2 = {"router": "s2", "shard": "s2"}
    moves = got["pgsessions_moves_in_progress"]
    assert moves[_key(**s1, target="s2", phase="fenced")] == 1
    assert moves[_key(**s1, target="s2", phase="copying")] == 0
    assert moves[_key(**s1, target="s3", phase="fenced")] == 0
    assert moves[_key(**s2, target="s1", phase="copying")] == 0
    assert sum(moves.values()) == 1
    assert not any(("shard", "s3") in k for k in moves)  # s3 did not answer: no gauge
    assert got["pgsessions_move_phase_seconds"] == {_key(**s1, target="s2", phase="fenced"): 2.5}
    assert got["pgsessions_move_lag_bytes"] == {_key(**s1, target="s2"): 4096}
    # the move's own slot, publication and (on the target) subscription are no leftovers
    left = got["pgsessions_move_leftovers"]
    assert left[_key(**s1, kind="slot")] == 1
    assert left[_key(**s1, kind="publication")] == 1
    assert left[_key(**s2, kind="subscription")] == 0
    assert got["pgsessions_move_leftover_retained_bytes"][_key(**s1)] == 1000
    up = got["pgsessions_move_check_up"]
    assert up == {_key(**s1): 1, _key(**s2): 1, _key(router="s3", shard="s3"): 0}


def test_a_redirect_is_counted_per_operation_on_the_shard_that_refused() -> None:
    router = _router()
    registry = CollectorRegistry()
    instrument(router, registry)
    router._redirected("add_items", "s2")
    router._redirected("add_items", "s2")
    router._redirected("pop_item", "s1")
    assert router.redirects == 3

    collector = collector_for(registry)

    def value(shard: str, operation: str) -> float | None:
        metrics = collector.get(router.shards[shard])  # a closed router is not scraped
        assert metrics is not None
        for fam in metrics.families():
            for s in fam.samples:
                if s.name == "pgsessions_redirects_total" and s.labels == {
                    "router": shard,
                    "shard": shard,
                    "operation": operation,
                }:
                    return s.value
        return None

    assert value("s2", "add_items") == 2
    assert value("s1", "pop_item") == 1
    assert value("s1", "add_items") is None
