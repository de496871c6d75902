"""The `pgsessions` commands on a sharded set-up (PGSESSIONS_SHARDS, no hosts): status,
usage, export and import, prune, serve-metrics and the demo, against two real replicated
clusters (the fixtures of test_sharding.py); and the fence of an import and a prune."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from pgsessions import PostgresSession
from pgsessions.devcluster import LocalCluster
from pgsessions.export.load import import_records
from pgsessions.export.records import ConversationRecord, ItemRecord
from pgsessions.retention.prune import prune
from pgsessions.router import ShardedRouter
from pgsessions.router.placement import bucket_of
from pgsessions.router.shard_env import render_shards
from tests.conftest import drop_schema
from tests.helpers import processes_under, run_result, user
from tests.lab import test_sharding as base
from tests.lab.test_sharding import messages_on, sid_on

# the two-shard fixtures of test_sharding.py (module scope: this module's own two clusters)
two = base.two
shard_schema = base.shard_schema
sharded = base.sharded

Two = tuple[LocalCluster, LocalCluster]


def shard_env(clusters: Two, schema: str) -> dict[str, str]:
    """This process's environment pointed at ``clusters`` as shards s1 and s2."""
    env = {k: v for k, v in os.environ.items() if k not in ("PGSESSIONS_HOSTS",)}
    env["PGSESSIONS_SHARDS"] = render_shards({"s1": clusters[0].dsns(), "s2": clusters[1].dsns()})
    env["PGSESSIONS_BUCKETS"] = "64"
    env["PGSESSIONS_SCHEMA"] = schema
    return env


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pgsessions", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=env,
    )


async def _fill(router: ShardedRouter, n: int, prefix: str = "cli") -> list[str]:
    sids = [f"{prefix}-{i}" for i in range(n)]
    for i, sid in enumerate(sids):
        s = PostgresSession(sid, router)
        await s.add_items([user(sid)])
        await s.store_run_usage(run_result(10 + i))
    assert {router._place(sid).shard for sid in sids} == {"s1", "s2"}
    return sids


async def test_status_shows_each_shard_its_buckets_and_sessions(
    sharded: ShardedRouter, two: Two, shard_schema: str
) -> None:
    sids = await _fill(sharded, 10)
    on = {n: sum(sharded._place(s).shard == n for s in sids) for n in ("s1", "s2")}
    env = shard_env(two, shard_schema)
    got = await asyncio.to_thread(cli, env, "status", "--json")
    assert got.returncode == 0, got.stderr
    data = json.loads(got.stdout)
    assert sorted(data["shards"]) == ["s1", "s2"]
    assert sum(s["buckets"] for s in data["shards"].values()) == data["buckets"] == 64
    assert {n: s["sessions"] for n, s in data["shards"].items()} == on
    assert data["sessions"] == 10
    roles = sorted((h["shard"], h["role"]) for h in data["hosts"])
    assert roles == [("s1", "primary"), ("s1", "replica"), ("s2", "primary"), ("s2", "replica")]
    text = await asyncio.to_thread(cli, env, "status")
    assert text.returncode == 0, text.stderr
    assert f"shard s1: 32 of 64 buckets, {on['s1']} sessions" in text.stdout
    assert f"shard s2: 32 of 64 buckets, {on['s2']} sessions" in text.stdout
    assert text.stdout.splitlines()[2].split()[:2] == ["shard", "host"]


def test_a_shard_that_cannot_be_reached_is_named(two: Two, shard_schema: str) -> None:
    env = shard_env(two, shard_schema)
    env["PGSESSIONS_SHARDS"] += ";s3=postgresql://u:secret@127.0.0.1:1/x"
    env["PGSESSIONS_CONNECT_TIMEOUT"] = "1"
    got = cli(env, "status")
    assert got.returncode != 0
    assert "s3" in got.stderr and "secret" not in got.stderr + got.stdout


async def test_usage_totals_are_the_sum_over_the_shards(
    sharded: ShardedRouter, two: Two, shard_schema: str
) -> None:
    await _fill(sharded, 12)
    got = await asyncio.to_thread(
        cli, shard_env(two, shard_schema), "usage", "--since", "1d", "--json"
    )
    assert got.returncode == 0, got.stderr
    (by_model,) = json.loads(got.stdout)["reports"]["by_model"]
    assert by_model["turns"] == 12 and by_model["sessions"] == 12
    assert by_model["total_tokens"] == sum(11 + i for i in range(12))


async def test_export_then_import_puts_each_session_on_its_owner(
    sharded: ShardedRouter, two: Two, shard_schema: str, tmp_path: Path
) -> None:
    sids = await _fill(sharded, 12, "move")
    env = shard_env(two, shard_schema)
    out = tmp_path / "all.jsonl"
    got = await asyncio.to_thread(cli, env, "export", "-o", str(out), "--json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["conversations"] == 12
    fresh = f"{shard_schema}_b"
    target = {**env, "PGSESSIONS_SCHEMA": fresh}
    try:
        migrated = await asyncio.to_thread(cli, target, "migrate")
        assert migrated.returncode == 0, migrated.stderr
        got = await asyncio.to_thread(cli, target, "import", str(out), "--json")
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout)["imported"] == 12
        a, b = two
        for sid in sids:
            owner, elsewhere = (a, b) if sharded._place(sid).shard == "s1" else (b, a)
            assert messages_on(owner, fresh, sid) == 1
            assert messages_on(elsewhere, fresh, sid) == 0
        again = await asyncio.to_thread(cli, target, "import", str(out), "--json")
        assert json.loads(again.stdout)["unchanged"] == 12
    finally:
        for c in two:
            drop_schema(c, fresh)


def _age(c: LocalCluster, schema: str, days: int) -> None:
    c.primary.execute(
        f"UPDATE \"{schema}\".conversations SET updated_at = now() - interval '{days} days'"
    )
    c.primary.execute(
        f"UPDATE \"{schema}\".messages SET created_at = now() - interval '{days} days'"
    )


async def test_prune_removes_from_both_shards(
    sharded: ShardedRouter, two: Two, shard_schema: str
) -> None:
    sids = await _fill(sharded, 10, "old")
    for c in two:
        _age(c, shard_schema, 40)
    got = await asyncio.to_thread(
        cli, shard_env(two, shard_schema), "prune", "--older-than", "30d", "--json"
    )
    assert got.returncode == 0, got.stderr
    summary = json.loads(got.stdout)
    assert summary["conversations_deleted"] == 10 and summary["items_deleted"] == 10
    for c in two:
        rows = c.primary.execute(f'SELECT count(*) FROM "{shard_schema}".conversations')
        assert rows[0][0] == 0
    assert all(messages_on(c, shard_schema, sid) == 0 for c in two for sid in sids)


def _move(two: Two, schema: str, bucket: int, to: int, epoch: int) -> None:
    """Hand ``bucket`` from one shard to the other (``to``: 0 = s1) at ``epoch``."""
    src, dst = (two[1], two[0]) if to == 0 else (two[0], two[1])
    src.primary.execute(f'DELETE FROM "{schema}".shard_buckets WHERE bucket = %s', (bucket,))
    dst.primary.execute(
        f'INSERT INTO "{schema}".shard_buckets (bucket, epoch) VALUES (%s, %s)', (bucket, epoch)
    )


async def test_an_import_is_fenced_and_lands_on_the_new_owner(
    sharded: ShardedRouter, two: Two, shard_schema: str
) -> None:
    sid = sid_on(sharded, "s1", "imp")
    _move(two, shard_schema, bucket_of(sid, 64), to=1, epoch=2)
    assert sharded._place(sid).shard == "s1"  # the router's directory is stale
    item = ItemRecord(seq=1, item=json.dumps(user("imported")), role="user", type="message")
    rec = ConversationRecord(session_id=sid, next_seq=2, items=[item])
    summary = await import_records(sharded, [rec])
    assert summary.imported == 1 and not summary.errors
    assert sharded._place(sid).shard == "s2"
    assert messages_on(two[0], shard_schema, sid) == 0
    assert messages_on(two[1], shard_schema, sid) == 1


async def test_prune_leaves_a_conversation_whose_bucket_moved_to_its_owner(
    sharded: ShardedRouter, two: Two, shard_schema: str
) -> None:
    sid = sid_on(sharded, "s2", "left")
    await PostgresSession(sid, sharded).add_items([user("old")])
    # the bucket goes to s1 while its rows stay on s2 (a move not finished): s2 must not
    # delete them, neither through a fresh directory nor through the stale one
    _move(two, shard_schema, bucket_of(sid, 64), to=0, epoch=2)
    _age(two[1], shard_schema, 40)
    stale = await prune(sharded, older_than=timedelta(days=30))
    assert stale.conversations_deleted == 0 and stale.conversations_skipped_not_owned == 1
    await sharded.refresh()
    fresh = await prune(sharded, older_than=timedelta(days=30))
    assert fresh.conversations_deleted == 0 and fresh.conversations_skipped_not_owned == 1
    assert messages_on(two[1], shard_schema, sid) == 1


async def test_serve_metrics_answers_for_each_shard(
    sharded: ShardedRouter, two: Two, shard_schema: str
) -> None:
    await _fill(sharded, 4)
    env = shard_env(two, shard_schema)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pgsessions",
        "serve-metrics",
        "--port",
        "0",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        async with asyncio.timeout(60):
            line = (await proc.stdout.readline()).decode()
        if not line.startswith("serving "):
            raise AssertionError((await proc.stderr.read()).decode()[-3000:])
        url = line.split()[1].removesuffix("/metrics")
        deadline = time.monotonic() + 30
        while True:
            metrics = await asyncio.to_thread(_get, f"{url}/metrics")
            if 'router="s1"' in metrics and 'router="s2"' in metrics:
                break
            assert time.monotonic() < deadline, metrics[-2000:]
            await asyncio.sleep(0.5)
        health = json.loads(await asyncio.to_thread(_get, f"{url}/healthz"))
        assert "s1" in json.dumps(health) and "s2" in json.dumps(health)
    finally:
        proc.terminate()
        async with asyncio.timeout(30):
            await proc.wait()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return str(r.read().decode())


@pytest.fixture
def demo_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="pgsessions-demo-shards-"))
    base.chmod(0o755)  # the servers run as another user
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_demo_with_shards_names_both_shards(demo_dir: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PGSESSIONS_HOSTS", "PGSESSIONS_SHARDS", "PGSESSIONS_SCHEMA")
    }
    env["PGSESSIONS_CLUSTER_DIR"] = str(demo_dir / "cluster")
    env["SHARDS"] = "2"
    args = ["--duration", "4", "--sessions", "20", "--think", "0.3", "--metrics-port", "0"]
    proc = subprocess.run(
        ["make", "-s", "demo", f"VENV={Path(sys.executable).parent.parent}"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "DEMO_ARGS": " ".join(args)},
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shards_line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("shards "))
    assert "s1: " in shards_line and "s2: " in shards_line
    counts = [int(p.split(": ")[1].split()[0]) for p in shards_line[11:].split(", ")]
    assert sum(counts) == 20 and all(counts)
    assert "MISMATCH" not in proc.stdout and "errors 0" in proc.stdout
    assert "metrics    http://" in proc.stdout  # served over both shards while it ran
    assert processes_under(demo_dir) == []
