"""Any thread, any event loop, after fork: a router used by sync and threaded code.

Real servers throughout. The router's pools belong to the loop that opened it; these tests
call it from other threads and loops while that loop is busy, blocked or gone, from a
router served by a loop thread of its own (``SessionRouter.start``), and from a forked child.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import multiprocessing
import threading
import time
from collections import Counter
from typing import Any

import psycopg
import pytest
from agents import Agent, Runner, set_tracing_disabled
from agents.testing import ScriptedModel, assistant_message

from pgsessions import PostgresSession, RouterClosedError, RouterConfig, SessionRouter, migrate
from pgsessions.devcluster import LocalCluster
from tests.helpers import poll, texts, user

set_tracing_disabled(True)


def pgsessions_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("pgsessions-")]


def backends(cluster: LocalCluster) -> int:
    rows = cluster.primary.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
        " AND datname = current_database() AND pid <> pg_backend_pid()"
    )
    return int(rows[0][0])


def pool_losses(router: SessionRouter) -> int:
    """Connections psycopg_pool found broken, over every host's pool."""
    return sum(s.get("connections_lost", 0) for s in router.pool_stats().values())


def echo_agent(text: str) -> Agent[Any]:
    """An agent whose scripted model answers ``text`` once."""
    model = ScriptedModel([[assistant_message(f"re: {text}")]])
    return Agent(name="echo", instructions="echo", model=model)


@pytest.fixture
def started(router_config: RouterConfig) -> Any:
    with SessionRouter.start(router_config) as r:
        r.run_sync(migrate(r))
        yield r


async def test_open_in_asyncio_run_returns_and_keeps_serving(router_config: RouterConfig) -> None:
    """``asyncio.run(router.open())`` returns; the router then serves other loops."""

    r = SessionRouter(router_config)
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, r.open()).result(timeout=30)
    assert time.monotonic() - t0 < 10
    try:
        await migrate(r)  # this test's loop is not the one that opened the router
        session = PostgresSession("after-its-loop-ended", r)
        await session.add_items([user("one"), user("two")])
        assert texts(await session.get_items()) == ["one", "two"]
    finally:
        await r.close()
    t0 = time.monotonic()
    with pytest.raises(RouterClosedError):
        await session.get_items()
    assert time.monotonic() - t0 < 1.0
    assert poll(lambda: not pgsessions_threads(), 10), pgsessions_threads()


async def test_sdk_concurrent_access_while_the_owner_loop_is_blocked(router: SessionRouter) -> None:
    """The SDK's ``test_sqlite_session_concurrent_access``: five threads, each with a new
    loop, add to one session while the loop that opened the router waits for them."""
    await migrate(router)
    session = PostgresSession("concurrent_test", router)
    items = [user(f"Message {i}") for i in range(10)]

    def add_item(item: dict[str, Any]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.run_until_complete(session.add_items([item]))
        loop.close()

    # blocks this loop (the router's owner) until every thread is done, as the SDK test does
    with concurrent.futures.ThreadPoolExecutor(max_workers=5) as executor:
        list(executor.map(add_item, items))

    retrieved = await session.get_items()
    assert sorted(texts(retrieved)) == sorted(f"Message {i}" for i in range(10))
    assert len(retrieved) == 10


async def test_calls_on_the_owner_loop_take_the_direct_path(router: SessionRouter) -> None:
    await migrate(router)
    session = PostgresSession("direct", router)
    await session.add_items([user("x")])
    assert texts(await session.get_items()) == ["x"]
    assert router._twin is None  # nothing was sent to another loop
    assert not pgsessions_threads()


def _turns(router: SessionRouter, session_id: str, tag: str, n: int) -> None:
    session = PostgresSession(session_id, router)
    for j in range(n):
        text = f"{tag}-{j}"
        result = Runner.run_sync(echo_agent(text), text, session=session)
        assert result.final_output == f"re: {text}"


def _run_threads(router: SessionRouter, plan: list[tuple[str, str]], turns: int) -> None:
    with concurrent.futures.ThreadPoolExecutor(len(plan)) as pool:
        futures = [pool.submit(_turns, router, sid, tag, turns) for sid, tag in plan]
        for f in futures:
            f.result(timeout=240)


def test_run_sync_from_16_threads_on_distinct_sessions(started: SessionRouter) -> None:
    plan = [(f"distinct-{i}", f"t{i}") for i in range(16)]
    _run_threads(started, plan, 20)
    for sid, tag in plan:
        got = texts(started.run_sync(PostgresSession(sid, started).get_items()))
        want = [x for j in range(20) for x in (f"{tag}-{j}", f"re: {tag}-{j}")]
        assert got == want  # each item once, in order


def test_run_sync_from_16_threads_on_one_shared_session(started: SessionRouter) -> None:
    plan = [("shared", f"t{i}") for i in range(16)]
    _run_threads(started, plan, 20)
    got = texts(started.run_sync(PostgresSession("shared", started).get_items()))
    counts = Counter(got)
    assert len(got) == 16 * 20 * 2 and max(counts.values()) == 1
    for i in range(16):
        mine = [c for c in got if c.split("-")[0].removeprefix("re: ") == f"t{i}"]
        # every thread's own turns keep their order: question j, then its answer, j ascending
        assert mine == [x for j in range(20) for x in (f"t{i}-{j}", f"re: t{i}-{j}")]


def test_stop_with_calls_in_flight(cluster: LocalCluster, router_config: RouterConfig) -> None:
    before = backends(cluster)
    router = SessionRouter.start(router_config)
    router.run_sync(migrate(router))
    acked: list[str] = []
    failures: list[BaseException] = []
    lock = threading.Lock()
    go = threading.Event()

    def writer(i: int) -> None:
        session = PostgresSession(f"stop-{i}", router)
        go.set()
        for j in range(10_000):
            text = f"{i}-{j}"
            try:
                asyncio.run(session.add_items([user(text)]))
            except BaseException as exc:
                with lock:
                    failures.append(exc)
                return
            with lock:
                acked.append(text)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    assert go.wait(10)
    assert poll(lambda: len(acked) >= 40, 30)
    router.stop(timeout=10)
    for t in threads:
        t.join(timeout=10)
        assert not t.is_alive(), "a call hung across stop()"
    assert failures and all(isinstance(e, RouterClosedError) for e in failures), failures
    assert poll(lambda: not pgsessions_threads(), 10), pgsessions_threads()
    # no connection of the stopped router is left (one an earlier test left may have gone)
    assert poll(lambda: backends(cluster) <= before, 15), (backends(cluster), before)
    t0 = time.monotonic()
    with pytest.raises(RouterClosedError):
        router.run_sync(PostgresSession("stop-0", router).get_items())
    assert time.monotonic() - t0 < 1.0
    # every acknowledged write landed once
    stored: list[str] = []
    with SessionRouter.start(router_config) as again:
        for i in range(8):
            stored += texts(again.run_sync(PostgresSession(f"stop-{i}", again).get_items()))
    assert len(stored) == len(set(stored))
    assert set(acked) <= set(stored)


def test_a_stopped_routers_loop_thread_answers_fast(router_config: RouterConfig) -> None:
    router = SessionRouter.start(router_config)
    assert router.thread is not None and router.thread.daemon
    router.stop()
    assert router.thread is None or not router.thread.is_alive()
    t0 = time.monotonic()
    with pytest.raises(RouterClosedError):
        asyncio.run(PostgresSession("gone", router).get_items())
    with pytest.raises(RouterClosedError):
        router.run_sync(PostgresSession("gone", router).get_items())
    assert time.monotonic() - t0 < 1.0


def _child(router: SessionRouter, config: RouterConfig, out: Any) -> None:
    """In the forked child: the inherited router refuses fast; the child's own one works.
    Then, the worst a finalizer could do: finish every inherited libpq connection."""
    try:
        t0 = time.monotonic()
        try:
            asyncio.run(PostgresSession("forked", router).add_items([user("from-inherited")]))
            out.put(("inherited", "accepted"))
        except RouterClosedError as exc:
            out.put(("inherited", "refused", str(exc), time.monotonic() - t0))

        async def own() -> None:
            async with SessionRouter(config) as mine:
                await PostgresSession("forked", mine).add_items([user("from-child")])

        asyncio.run(own())
        out.put(("own", "ok"))
        n = 0
        for obj in gc.get_objects():
            if isinstance(obj, psycopg.AsyncConnection) and not obj.closed:
                obj.pgconn.finish()  # what a finalizer does: sends Terminate
                n += 1
        out.put(("finished", n))
    except BaseException as exc:
        out.put(("error", repr(exc)))


async def test_fork_child_never_touches_the_parents_connections(
    router: SessionRouter, router_config: RouterConfig
) -> None:
    await migrate(router)
    session = PostgresSession("forked", router)
    await session.add_items([user("before")])
    lost = router.stats()["connections_lost"]
    pooled_lost = pool_losses(router)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_child, args=(router, router_config, out))
    child.start()
    await asyncio.to_thread(child.join, 60)
    assert child.exitcode == 0
    got = [out.get(timeout=5) for _ in range(3)]
    assert got[0][:2] == ("inherited", "refused"), got
    assert "fork" in got[0][2] and got[0][3] < 1.0
    assert got[1] == ("own", "ok") and got[2][0] == "finished" and got[2][1] > 0, got
    # the parent's pooled connections were never closed by the child
    await session.add_items([user("after")])
    assert texts(await session.get_items()) == ["before", "from-child", "after"]
    stats = router.stats()
    assert stats["connections_lost"] == lost and not stats["retries"], stats
    assert pool_losses(router) == pooled_lost, router.pool_stats()


def test_operations_across_sessions_from_sync_code(started: SessionRouter) -> None:
    """migrate, listing, usage, export, import and prune: each a coroutine run from a
    thread without a loop (``run_sync``) and from threads with loops of their own."""
    from datetime import UTC, datetime, timedelta

    from pgsessions import list_sessions
    from pgsessions.analytics.report import usage_report
    from pgsessions.export.dump import export_lines
    from pgsessions.export.load import import_records
    from pgsessions.export.records import read_export
    from pgsessions.retention.prune import prune
    from tests.helpers import run_result

    for i in range(3):
        s = PostgresSession(f"ops-{i}", started)
        started.run_sync(s.add_items([user(f"hello {i}")]))
        started.run_sync(s.store_run_usage(run_result(10 + i)))
    # the listing may be read on a replica: the last session's token (its writes are the
    # newest on the one primary) makes it see all three
    token = s.consistency_token
    page = asyncio.run(list_sessions(started, limit=10, consistency_token=token))
    assert {p.session_id for p in page.sessions} >= {"ops-0", "ops-1", "ops-2"}
    now = datetime.now(UTC)

    def tokens_by_session() -> list[Any]:
        # a report takes no token: it sees writes older than one monitor check
        report = started.run_sync(
            usage_report(started, since=now - timedelta(hours=1), until=now + timedelta(hours=1))
        )
        by_session = {r["session_id"]: r for r in report.reports["by_session"]}
        return [by_session.get(f"ops-{i}", {}).get("input_tokens") for i in range(3)]

    assert poll(lambda: tokens_by_session() == [10, 11, 12]), tokens_by_session()

    async def export() -> list[str]:
        return [line async for line in export_lines(started, session_ids_=["ops-1"])]

    lines = asyncio.run(export())
    assert any("hello 1" in line for line in lines)
    records = list(read_export(lines))
    summary = started.run_sync(import_records(started, records, replace=True))
    assert not summary.errors
    pruned = started.run_sync(prune(started, older_than=timedelta(days=365)))
    assert pruned.conversations_deleted == 0 and pruned.transactions >= 1
    assert started.topology().primary is not None


def test_cancelling_a_caller_on_another_loop(started: SessionRouter) -> None:
    """A cancelled write settles (stored once, then the caller sees its cancellation); a
    cancelled read is cancelled on the router's loop too."""
    session = PostgresSession("cancelled", started)

    async def cancel_write(text: str) -> None:
        task = asyncio.ensure_future(session.add_items([user(text)]))
        await asyncio.sleep(0)  # let it start
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    sent = [f"settled-{i}" for i in range(6)]
    for text in sent:
        asyncio.run(cancel_write(text))
    got = texts(started.run_sync(session.get_items()))
    # each cancelled write either never started or settled: stored at most once, in order
    assert len(got) == len(set(got)) and got == [t for t in sent if t in got], got

    async def cancel_read() -> None:
        task = asyncio.ensure_future(session.get_items())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_read())
    assert poll(lambda: not any(started.stats()["in_flight"].values()), 5)


def test_the_docs_sync_example_runs(
    router_config: RouterConfig, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pathlib import Path

    page = (
        Path(__file__).resolve().parent.parent.parent / "docs" / "sync-and-threads.md"
    ).read_text()
    section = page.split("# Sync and threaded apps", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.setenv("PGSESSIONS_HOSTS", ",".join(router_config.host_list))
    monkeypatch.setenv("PGSESSIONS_SCHEMA", router_config.schema)
    exec(compile(code, "docs/sync-and-threads.md", "exec"), {})
    assert capsys.readouterr().out.strip() == "Hi! 2"
    assert poll(lambda: not pgsessions_threads(), 10), pgsessions_threads()
