"""The pure decisions of the commands on a sharded set-up: when they open a ShardedRouter,
what status prints for shards, how the demo adds up the shards' counters, how a move's
progress prints."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pgsessions.cli.common import shards_given
from pgsessions.cli.shard import _printer
from pgsessions.cli.status import ShardReport, ShardState
from pgsessions.demo.shards import format_placement, merged_stats
from pgsessions.router.topology import HostState, Topology
from pgsessions.shards import MoveProgress

SHARDS = "s1=postgresql://a/db;s2=postgresql://b/db"


def test_shards_are_used_only_without_hosts() -> None:
    env = {"PGSESSIONS_SHARDS": SHARDS}
    assert shards_given(None, env=env)
    assert not shards_given(["postgresql://h/db"], env=env)
    assert not shards_given(None, env={**env, "PGSESSIONS_HOSTS": "h"})
    assert not shards_given(None, local=True, env=env)  # --local: the local cluster
    assert not shards_given(None, env={"PGSESSIONS_SHARDS": "  "})
    assert not shards_given(None, env={})
    # an empty PGSESSIONS_HOSTS names no cluster: the shards are used
    assert shards_given(None, env={**env, "PGSESSIONS_HOSTS": ""})


def _shard(name: str, buckets: int, sessions: int | None, primary: bool = True) -> ShardState:
    hosts = (
        HostState(host=f"{name}-a:5432", role="primary", up=True),
        HostState(host=f"{name}-b:5432", role="replica", up=True, eligible=True),
    )
    topo = Topology(hosts=hosts, primary=f"{name}-a:5432" if primary else None)
    return ShardState(name, topo, buckets, sessions, 0)


def test_status_of_shards_names_each_shard_its_buckets_and_sessions() -> None:
    report = ShardReport([_shard("s1", 512, 7), _shard("s2", 512, None)], 1024)
    text = report.format().splitlines()
    assert text[0] == "shard s1: 512 of 1024 buckets, 7 sessions, primary: s1-a:5432"
    assert text[1].startswith("shard s2: 512 of 1024 buckets, - sessions")
    assert text[2].split()[:3] == ["shard", "host", "role"]
    assert [ln.split()[0] for ln in text[3:]] == ["s1", "s1", "s2", "s2"]
    data = report.as_json()
    assert data["buckets"] == 1024 and data["sessions"] == 7
    assert {n: s["buckets"] for n, s in data["shards"].items()} == {"s1": 512, "s2": 512}
    assert [h["shard"] for h in data["hosts"]] == ["s1", "s1", "s2", "s2"]
    assert report.healthy
    assert not ShardReport([_shard("s1", 1, 0), _shard("s2", 1, 0, primary=False)], 2).healthy


def test_the_demo_adds_up_every_shards_counters() -> None:
    one = {"reads": {"replica": {"caught_up": 3}}, "writes": 5, "reads_by_host": {"a": 3}}
    two = {"reads": {"replica": {"caught_up": 1}, "primary": {"token": 2}}, "writes": 4}
    merged = merged_stats({"s1": one, "s2": {**two, "reads_by_host": {"b": 3}}})
    assert merged["writes"] == 9
    assert merged["reads"] == {"replica": {"caught_up": 4}, "primary": {"token": 2}}
    assert merged["reads_by_host"] == {"a": 3, "b": 3}


def test_the_demo_names_where_the_conversations_live() -> None:
    line = format_placement(
        {
            "s1": {"sessions": 3, "buckets": 512, "example": "demo-1"},
            "s2": {"sessions": 0, "buckets": 512, "example": None},
        }
    )
    assert line == (
        "shards     s1: 3 conversations (512 buckets; e.g. demo-1), "
        "s2: 0 conversations (512 buckets)"
    )


def test_a_move_phase_prints_why_it_happens(capsys: pytest.CaptureFixture[str]) -> None:
    note = "shard 's2': its primary failed over since the copy started"
    event = MoveProgress("abc", "copy-restarted", "s1", "s2", (3, 4, 5), 1.5, note=note)
    _printer(False)(event)
    _printer(False)(dataclasses.replace(event, phase="copying", note=None))
    first, second = capsys.readouterr().out.splitlines()
    assert first.endswith(f"s1 -> s2 buckets 3-5: copy-restarted ({note})")
    assert second.endswith("buckets 3-5: copying")
    _printer(True)(event)
    assert json.loads(capsys.readouterr().out)["note"] == note
