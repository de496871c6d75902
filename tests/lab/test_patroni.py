"""A real Patroni + etcd cluster (synchronous_mode): `cluster up --patroni` and the leader
node killed under a live writer: nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgsessions import PostgresSession, RouterConfig, SessionRouter, migrate
from pgsessions.devcluster.patroni import PatroniCluster
from tests.helpers import apoll, cluster_cli, cluster_state_dir, running_patroni


@pytest.fixture
def patroni() -> Iterator[PatroniCluster]:
    with running_patroni() as pc:
        yield pc


async def test_leader_node_killed_loses_no_acknowledged_write(patroni: PatroniCluster) -> None:
    rows = patroni.status()
    assert sorted(r["role"] for r in rows) == ["leader", "replica", "sync_standby"]
    old = patroni.leader()
    assert old is not None
    cfg = RouterConfig(hosts=patroni.dsns(), schema="patroni_t", check_interval=0.2)
    acked: list[str] = []
    async with SessionRouter(cfg) as router:
        await migrate(router)
        session = PostgresSession("conv", router)
        stop = asyncio.Event()
        ack_times: list[float] = []

        async def writer() -> None:
            n = 0
            while not stop.is_set():
                item: Any = {"role": "user", "content": f"m{n}"}
                await session.add_items([item])
                acked.append(f"m{n}")
                ack_times.append(time.monotonic())
                n += 1

        task = asyncio.create_task(writer())
        assert await apoll(lambda: _at_least(acked, 20), within=10)
        t_kill = time.monotonic()
        await asyncio.to_thread(patroni.kill_member, old.name)
        dead = time.monotonic()  # acks from here on come from the new leader
        target = len(acked) + 20
        assert await apoll(lambda: _at_least(acked, target), within=40)
        stop.set()
        await task
        after = [t for t in ack_times if t > t_kill]
        gap = max(b - a for a, b in zip([t_kill, *after], after, strict=False))
        print(f"\nleader node killed ({dead - t_kill:.1f}s to kill): writes paused {gap:.1f}s")
        new = patroni.leader()
        assert new is not None and new.name != old.name
    with psycopg.connect(new.dsn) as conn:
        got = [
            r[0]
            for r in conn.execute(
                "SELECT item->>'content' FROM patroni_t.messages WHERE session_id = 'conv'"
                " ORDER BY seq"
            )
        ]
    assert got[: len(acked)] == acked  # none lost, none duplicated, in order
    assert len(got) - len(acked) <= 1  # at most the one in flight when the writer stopped


async def _at_least(items: list[Any], n: int) -> bool:
    return len(items) >= n


def test_cli_up_status_down_with_patroni() -> None:
    d = cluster_state_dir("pgs-patroni-cli-")
    up = cluster_cli("up", "--patroni", "--dir", str(d), "--json", timeout=180)
    assert up.returncode == 0, up.stderr
    try:
        info = json.loads(up.stdout)
        assert len(info["members"]) == 3 and len(info["patroni"]) == 3
        status = cluster_cli("status", "--dir", str(d), "--json", timeout=60)
        roles = sorted(r["role"] for r in json.loads(status.stdout))
        assert roles == ["leader", "replica", "sync_standby"]
    finally:
        down = cluster_cli("down", "--dir", str(d), timeout=120)
    assert down.returncode == 0, down.stderr
    assert not d.exists()
