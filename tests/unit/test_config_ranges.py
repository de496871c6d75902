"""Every numeric setting of RouterConfig, and every numeric CLI flag, refuses what it cannot
serve (negative, zero where it means nothing, NaN, infinity, wrong types, huge values) with a
ValueError naming the setting, the value and the allowed range. No database."""

from __future__ import annotations

import math
from typing import Any

import pytest

from pgsessions.router import RouterConfig
from pgsessions.router.config import SETTINGS

HOSTS = ["postgresql://u@h/db"]

#: settings for which 0 is meaningful (no lag allowed, no wait, an empty pool, no bound)
ZERO_OK = {
    "max_lag_bytes",
    "healthy_for",
    "catch_up_wait",
    "primary_pool_min",
    "replica_pool_min",
    "pool_max_waiting",
}
INTS = {
    "max_lag_bytes",
    "primary_pool_min",
    "primary_pool_max",
    "replica_pool_min",
    "replica_pool_max",
    "pool_max_waiting",
    "token_cache_size",
}
FLOATS = {
    "max_lag_seconds",
    "check_interval",
    "healthy_for",
    "failover_timeout",
    "catch_up_wait",
    "connect_timeout",
    "statement_timeout",
    "check_timeout",
    "pool_timeout",
    "session_ttl",
}
BAD_FOR_ALL: list[Any] = [
    -1,
    -0.5,
    math.nan,
    math.inf,
    -math.inf,
    True,
    False,
    "1",
    b"1",
    [1],
    10**400,
    1e300,
]


def test_the_table_covers_every_numeric_setting() -> None:
    assert set(SETTINGS) == INTS | FLOATS


@pytest.mark.parametrize("name", sorted(INTS | FLOATS))
@pytest.mark.parametrize("bad", BAD_FOR_ALL, ids=repr)
def test_every_setting_refuses_what_it_cannot_serve(name: str, bad: Any) -> None:
    with pytest.raises(ValueError, match=f"RouterConfig.{name} must be .*, got ") as err:
        RouterConfig(hosts=HOSTS, **{name: bad})
    assert SETTINGS[name].describe() in str(err.value)
    assert f"got {repr(bad)[:20]}" in str(err.value)  # huge values are shortened


@pytest.mark.parametrize("name", sorted(INTS | FLOATS))
def test_zero_is_refused_where_it_means_nothing(name: str) -> None:
    if name in ZERO_OK:
        assert getattr(RouterConfig(hosts=HOSTS, **{name: 0}), name) == 0
    else:
        with pytest.raises(ValueError, match=f"RouterConfig.{name} must be .* (> 0|>= 1) and"):
            RouterConfig(hosts=HOSTS, **{name: 0})


@pytest.mark.parametrize("name", sorted(INTS))
def test_integer_settings_refuse_floats(name: str) -> None:
    with pytest.raises(ValueError, match=f"RouterConfig.{name} must be an integer"):
        RouterConfig(hosts=HOSTS, **{name: 2.0})


@pytest.mark.parametrize("name", sorted(FLOATS))
def test_float_settings_take_ints(name: str) -> None:
    assert getattr(RouterConfig(hosts=HOSTS, **{name: 2}), name) == 2


def test_the_reported_cases() -> None:
    with pytest.raises(ValueError, match=r"primary_pool_min must be an integer >= 0.*got -5"):
        RouterConfig(hosts=HOSTS, primary_pool_min=-5)
    with pytest.raises(ValueError, match=r"replica_pool_min must be an integer >= 0.*got -1"):
        RouterConfig(hosts=HOSTS, replica_pool_min=-1)
    for knob in sorted(FLOATS):
        with pytest.raises(ValueError, match=f"{knob} must be a finite number"):
            RouterConfig(hosts=HOSTS, **{knob: math.nan})


def test_minimum_must_not_exceed_maximum() -> None:
    with pytest.raises(ValueError, match=r"primary_pool_min \(11\) must be <= primary_pool_max"):
        RouterConfig(hosts=HOSTS, primary_pool_min=11, primary_pool_max=10)
    with pytest.raises(ValueError, match=r"replica_pool_min \(3\) must be <= replica_pool_max"):
        RouterConfig(hosts=HOSTS, replica_pool_min=3, replica_pool_max=2)
    cfg = RouterConfig(hosts=HOSTS, primary_pool_min=10, primary_pool_max=10)
    assert cfg.primary_pool_min == cfg.primary_pool_max == 10


def test_other_settings_are_typed() -> None:
    with pytest.raises(ValueError, match="read_from_replicas must be True or False, got 1"):
        RouterConfig(hosts=HOSTS, read_from_replicas=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        RouterConfig(hosts=HOSTS, name="")
    with pytest.raises(ValueError, match="schema"):
        RouterConfig(hosts=HOSTS, schema=7)  # type: ignore[arg-type]
    assert RouterConfig(hosts=HOSTS, session_ttl=None).session_ttl is None


@pytest.mark.parametrize("name", sorted(INTS | FLOATS))
@pytest.mark.parametrize("raw", ["nan", "inf", "-1", "soon", "1e400", "true"])
def test_from_env_checks_every_setting(
    name: str, raw: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = f"PGSESSIONS_{name.upper()}"
    monkeypatch.setenv("PGSESSIONS_HOSTS", HOSTS[0])
    monkeypatch.setenv(env, raw)
    with pytest.raises(ValueError, match=f"{env}='{raw}' must be "):
        RouterConfig.from_env()


def test_from_env_reads_every_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGSESSIONS_HOSTS", HOSTS[0])
    monkeypatch.setenv("PGSESSIONS_PRIMARY_POOL_MIN", "3")
    monkeypatch.setenv("PGSESSIONS_STATEMENT_TIMEOUT", "2.5")
    monkeypatch.setenv("PGSESSIONS_READ_FROM_REPLICAS", "off")
    cfg = RouterConfig.from_env()
    assert (cfg.primary_pool_min, cfg.statement_timeout, cfg.read_from_replicas) == (3, 2.5, False)
    assert RouterConfig.from_env(primary_pool_min=1).primary_pool_min == 1
    monkeypatch.setenv("PGSESSIONS_PRIMARY_POOL_MIN", "30")
    with pytest.raises(ValueError, match=r"primary_pool_min \(30\) must be <= primary_pool_max"):
        RouterConfig.from_env()
    monkeypatch.setenv("PGSESSIONS_PRIMARY_POOL_MIN", "1")
    monkeypatch.setenv("PGSESSIONS_READ_FROM_REPLICAS", "maybe")
    with pytest.raises(ValueError, match="PGSESSIONS_READ_FROM_REPLICAS='maybe'"):
        RouterConfig.from_env()


FLAGS = [
    (["serve-metrics", "--hosts", "host=h"], "--port"),
    (["prune", "--hosts", "host=h", "--older-than", "1d"], "--batch"),
    (["prune", "--hosts", "host=h", "--older-than", "1d"], "--item-batch"),
    (["cluster", "up"], "--replicas"),
    (["status", "--hosts", "host=h"], "--interval"),
    (["demo"], "--duration"),
    (["demo"], "--sessions"),
    (["demo"], "--think"),
    (["demo"], "--pool"),
    (["demo"], "--metrics-port"),
    (["drill", "all"], "--sessions"),
    (["drill", "all"], "--warmup"),
    (["drill", "all"], "--hold"),
    (["drill", "all"], "--after"),
    (["drill", "all"], "--ttl"),
    (["drill", "all"], "--loop-wait"),
    (["drill", "all"], "--shards"),
]


@pytest.mark.parametrize(("argv", "flag"), FLAGS, ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("raw", ["nan", "inf", "-1", "x", "1e400", "99999999"])
def test_numeric_flags_refuse_bad_values(
    argv: list[str], flag: str, raw: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from pgsessions.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, flag, raw])
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and f"'{raw}': must be " in err


async def test_call_arguments_use_the_same_ranges() -> None:
    from datetime import timedelta

    from pgsessions import SessionRouter, list_sessions
    from pgsessions.retention import prune

    router = SessionRouter(RouterConfig(hosts=HOSTS))  # never opened: refused before any I/O
    for bad in (0, -1, True, 2.0, 10**30):
        with pytest.raises(ValueError, match="limit must be an integer >= 1"):
            await list_sessions(router, limit=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="batch must be an integer >= 1"):
            await prune(router, older_than=timedelta(days=1), batch=bad)  # type: ignore[arg-type]
