"""Pure router decisions on plain data, no server: the read planner (every row of its
table), the required position, token validation and caps, the failure classifier and the
replica health assessment."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import errors as e
from psycopg_pool import PoolClosed, PoolTimeout, TooManyRequests

from pgsessions.router import RouterConfig
from pgsessions.router.classify import (
    CONNECTION,
    POOL_TIMEOUT,
    READ_ONLY,
    RECOVERY_CONFLICT,
    RESOURCES,
    SHUTDOWN,
    classify,
    is_connection_loss,
    is_overload,
)
from pgsessions.router.health import Health, assess
from pgsessions.router.lsn import format_lsn, parse_lsn
from pgsessions.router.planner import plan_read, required_position
from pgsessions.router.probe import Probe
from pgsessions.router.tokens import TokenStore


@dataclass
class H:
    label: str
    role: str = "replica"
    usable: bool = True
    eligible: bool = True
    replay_lsn: int = 100
    in_flight: int = 0


def cfg(**kw: object) -> RouterConfig:
    return RouterConfig(hosts=["host=p port=1", "host=r1 port=1", "host=r2 port=1"], **kw)  # type: ignore[arg-type]


def cluster(r1: int = 100, r2: int = 100) -> list[H]:
    return [
        H("p", role="primary", eligible=False, replay_lsn=-1),
        H("r1", replay_lsn=r1),
        H("r2", replay_lsn=r2),
    ]


# ------------------------------------------------------------------ required position
def test_a_token_can_only_raise_the_required_position() -> None:
    # the flaw this guards against: a token older than the last check lowered the bar
    assert required_position(50, 200, 0) == 200
    assert required_position(300, 200, 0) == 300
    assert required_position(None, 200, 0) == 200
    assert required_position(None, 200, 500) == 500
    assert required_position(None, None, 0) is None
    assert required_position(0, None, 0) == 0


# ------------------------------------------------------------------ the plan table
def test_replica_when_one_has_replayed_the_position() -> None:
    plan = plan_read(cluster(r1=90, r2=100), "p", 100, cfg())
    assert (plan.host and plan.host.label, plan.reason, plan.wait_lsn) == ("r2", "replica", None)


def test_replica_choice_prefers_fewest_in_flight() -> None:
    hosts = cluster()
    hosts[1].in_flight = 3
    assert {plan_read(hosts, "p", 100, cfg()).host.label for _ in range(20)} == {"r2"}  # type: ignore[union-attr]


def test_caught_up_wait_on_the_most_advanced_replica() -> None:
    plan = plan_read(cluster(r1=90, r2=95), "p", 100, cfg())
    assert plan.reason == "caught_up_wait" and plan.wait_lsn == 100
    assert plan.host is not None and plan.host.label == "r2"


def test_token_ahead_goes_to_the_primary_once_waiting_failed_or_is_off() -> None:
    for plan in (
        plan_read(cluster(90, 95), "p", 100, cfg(), allow_wait=False),
        plan_read(cluster(90, 95), "p", 100, cfg(catch_up_wait=0)),
    ):
        assert plan.reason == "token_ahead" and plan.host is not None
        assert plan.host.label == "p"


@pytest.mark.parametrize(("policy", "host"), [("primary", "p"), ("wait", None), ("error", None)])
def test_no_eligible_replica_under_each_policy(policy: str, host: str | None) -> None:
    hosts = cluster()
    for h in hosts[1:]:
        h.eligible = False
    plan = plan_read(hosts, "p", 100, cfg(no_replica_policy=policy))
    assert plan.reason == "no_eligible_replica"
    assert (plan.host.label if plan.host else None) == host


def test_excluded_and_unusable_hosts_are_skipped() -> None:
    hosts = cluster()
    hosts[2].usable = False
    plan = plan_read(hosts, "p", 100, cfg(), excluded={"r1"})
    assert plan.reason == "no_eligible_replica" and plan.host is not None
    assert plan.host.label == "p"
    hosts[0].usable = False  # the primary is suspect too: nowhere to go now
    assert plan_read(hosts, "p", 100, cfg(), excluded={"r1"}).host is None


def test_no_primary_any_answering_standby_serves_what_it_has() -> None:
    hosts = cluster(r1=90, r2=100)
    hosts[0].usable = False
    for h in hosts[1:]:
        h.eligible = False  # no primary to measure lag against
    plan = plan_read(hosts, None, 100, cfg())
    assert plan.reason == "no_primary" and plan.host is not None and plan.host.label == "r2"


def test_primary_only() -> None:
    plan = plan_read(cluster(), "p", 100, cfg(read_from_replicas=False))
    assert plan.reason == "primary_only" and plan.host is not None and plan.host.label == "p"
    assert plan_read(cluster(), None, 100, cfg(read_from_replicas=False)).host is None


def test_split_brain_reads_stay_off_the_other_writable_host() -> None:
    # two writable hosts: the router kept the previous primary "p"; "x" is the intruder.
    # No replica is eligible in a split brain (lag cannot be measured).
    hosts = [*cluster(), H("x", role="primary", eligible=False, replay_lsn=-1)]
    for h in hosts[1:3]:
        h.eligible = False
    plan = plan_read(hosts, "p", 100, cfg())
    assert plan.host is not None and plan.host.label == "p"
    # previous primary not among the writable ones: no primary, a standby serves
    plan = plan_read(hosts, None, 100, cfg())
    assert plan.reason == "no_primary" and plan.host is not None
    assert plan.host.label in ("r1", "r2")


def test_the_drills_position_blind_planner_serves_a_stale_replica() -> None:
    from pgsessions.drills.broken import TokenIgnoringRouter, position_blind

    assert plan_read(cluster(90, 95), "p", 100, cfg(), allow_wait=False).host is not None
    assert plan_read(cluster(90, 95), "p", 100, cfg(), allow_wait=False).reason != "replica"
    plan = position_blind(plan_read)(cluster(90, 95), "p", 100, cfg(), allow_wait=False)
    assert plan.reason == "replica"
    assert TokenIgnoringRouter._plan_read is not plan_read


def test_newest_token_compares_positions_not_text() -> None:
    from pgsessions.router.tokens import newest

    assert newest([None, "0/9", "0/10", None]) == "0/10"  # 0x10 > 0x9, though "0/9" > "0/10"
    assert newest([None, None]) is None
    with pytest.raises(ValueError, match="not a PostgreSQL LSN"):
        newest(["0/1", "nope"])


# ------------------------------------------------------------------ tokens
@pytest.mark.parametrize(
    "bad",
    ["", "0", "0/", "/0", "-1/0", "0x1/0", "1_0/0", "1/ 0", "G/0", "100000000/0", "0/0/0", 7],
)
def test_malformed_tokens_are_refused_naming_the_value(bad: object) -> None:
    with pytest.raises(ValueError, match="not a PostgreSQL LSN") as info:
        parse_lsn(bad)  # type: ignore[arg-type]
    assert repr(bad) in str(info.value)


def test_token_range_is_0_to_2_64_minus_1() -> None:
    assert parse_lsn("0/0") == 0
    assert parse_lsn("FFFFFFFF/FFFFFFFF") == 2**64 - 1
    assert format_lsn(parse_lsn("16/B374D848")) == "16/B374D848"


def test_token_store_keeps_the_newest_and_is_bounded() -> None:
    s = TokenStore(2)
    s.remember("a", 10)
    s.remember("a", 5)
    assert s.get("a") == format_lsn(10)
    s.remember("b", 1)
    s.remember("c", 1)
    assert s.get("a") is None and len(s) == 2
    assert s.required("b", format_lsn(7)) == 7
    assert s.required("b", None) == 1
    assert s.required(None, None) is None


def test_a_token_beyond_the_primary_is_capped_by_value() -> None:
    s = TokenStore(10)
    forged = parse_lsn("FFFF/0")
    s.remember("a", forged)
    assert s.cap(forged, 500) is True
    assert s.cap(forged, 500) is False  # counted once
    assert s.cap(400, 500) is False  # not beyond the primary: never capped
    assert s.required("a", None) == 500
    assert s.required("other", "FFFF/0") == 500  # any holder of that value
    assert s.get("a") == format_lsn(500)


# ------------------------------------------------------------------ classifier
def _sqlstate_error(cls: type[psycopg.Error]) -> psycopg.Error:
    return cls("x")


@pytest.mark.parametrize(
    ("exc", "write", "reason"),
    [
        (psycopg.OperationalError("server closed the connection"), True, CONNECTION),
        (_sqlstate_error(e.AdminShutdown), True, SHUTDOWN),
        (_sqlstate_error(e.CannotConnectNow), False, SHUTDOWN),
        (_sqlstate_error(e.ReadOnlySqlTransaction), True, READ_ONLY),
        (_sqlstate_error(e.ReadOnlySqlTransaction), False, None),
        (_sqlstate_error(e.SerializationFailure), False, RECOVERY_CONFLICT),
        (_sqlstate_error(e.DeadlockDetected), False, RECOVERY_CONFLICT),
        (_sqlstate_error(e.SerializationFailure), True, None),
        (_sqlstate_error(e.TooManyConnections), True, RESOURCES),
        (_sqlstate_error(e.OutOfMemory), False, RESOURCES),
        (PoolTimeout("x"), True, POOL_TIMEOUT),
        (TooManyRequests("x"), True, POOL_TIMEOUT),
        (PoolClosed("x"), True, "pool_closed"),
        (_sqlstate_error(e.UniqueViolation), True, None),
        (_sqlstate_error(e.InvalidTextRepresentation), True, None),
        (_sqlstate_error(e.SyntaxError), False, None),
        (ValueError("x"), True, None),
    ],
)
def test_classifier(exc: BaseException, write: bool, reason: str | None) -> None:
    assert classify(exc, write=write) == reason


def test_overload_is_not_connection_loss() -> None:
    for exc in (PoolTimeout("x"), TooManyRequests("x"), _sqlstate_error(e.DiskFull)):
        assert is_overload(exc) and not is_connection_loss(exc)
    assert is_connection_loss(psycopg.OperationalError("eof"))
    assert not is_overload(psycopg.OperationalError("eof"))


# ------------------------------------------------------------------ replica health
def _probe(**kw: object) -> Probe:
    base: dict[str, object] = {
        "up": True,
        "in_recovery": True,
        "replay_lsn": 100,
        "replay_ts": 1000.0,
        "wal_status": "streaming",
        "started": time.monotonic(),
    }
    base.update(kw)
    return Probe(**base)  # type: ignore[arg-type]


PRIMARY = Probe(up=True, in_recovery=False, flush_lsn=100, server_now=1000.5)


def test_health_caught_up_replica_is_eligible_at_first_check() -> None:
    h = Health()
    assess(h, _probe(), PRIMARY, 100, deque(), cfg())
    assert h.eligible and h.reason is None and h.lag_bytes == 0 and h.lag_seconds == 0.0


@pytest.mark.parametrize(
    ("probe", "primary_lsn", "why"),
    [
        (_probe(up=False, error="down"), 100, "down"),
        (_probe(in_recovery=False), 100, "not a standby"),
        (_probe(wal_status=None), 100, "walreceiver stopped"),
        (_probe(wal_status="hidden"), 100, "needs pg_monitor"),
        (_probe(replay_lsn=100), 100 + 17 * 2**20, "bytes"),
        (_probe(replay_lsn=99, replay_ts=900.0), 100, "lag 100.5s"),
    ],
)
def test_health_reasons_to_leave_rotation(probe: Probe, primary_lsn: int, why: str) -> None:
    h = Health(eligible=True)
    assess(h, probe, PRIMARY, primary_lsn, deque(), cfg())
    assert not h.eligible and h.reason is not None and why in h.reason


def test_health_hysteresis_keeps_a_recovered_replica_out_for_healthy_for() -> None:
    h = Health()
    c = cfg(healthy_for=30.0)
    assess(h, _probe(wal_status="stopping"), PRIMARY, 100, deque(), c)
    assert not h.eligible
    assess(h, _probe(), PRIMARY, 100, deque(), c)
    assert not h.eligible and h.healthy_since is not None  # healthy, but not for 30 s yet
    h.healthy_since -= 31
    assess(h, _probe(), PRIMARY, 100, deque(), c)
    assert h.eligible


def test_health_idle_primary_is_not_lag() -> None:
    # nothing written for an hour: replay timestamp is old but the replica has everything
    h = Health()
    assess(h, _probe(replay_ts=0.0), PRIMARY, 100, deque(), cfg())
    assert h.eligible and h.lag_seconds == 0.0


def test_a_replay_position_seen_by_a_request_counts_until_the_host_is_forgotten() -> None:
    from pgsessions.router.hosts import Host
    from pgsessions.router.probe import Probe

    config = RouterConfig(hosts=["postgresql://app@db2:5432/agents"])
    h = Host(config.host_list[0], config)
    assert h.replay_lsn == -1
    h.probe = Probe(up=True, in_recovery=True, replay_lsn=100)
    assert h.replay_lsn == 100
    h.saw_replay(150)
    h.saw_replay(120)  # never lowers what was seen
    assert h.replay_lsn == 150
    h.probe = Probe(up=True, in_recovery=True, replay_lsn=200)
    assert h.replay_lsn == 200  # a newer probe wins
    h.saw_replay(250)
    h.saw_flush(300)
    h.forget_positions()  # a restart, a role change or a failed request
    assert h.replay_lsn == 200 and h.seen_flush == -1
