"""The threads workload: agent turns from sync code in many threads, next to asyncio tasks.

``tasks``: ``Runner.run`` in N tasks on the loop that opened the routed contender's router
(the direct path). ``threads``: ``Runner.run_sync`` from N threads on a router made with
``SessionRouter.start`` (its own loop thread; every call hops there and back). Same scripted
model, same settings, same cluster; rounds interleaved.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from .harness import (
    Bench,
    Cell,
    Recorder,
    RoundResult,
    SessionState,
    check_history,
    drive,
    percentile,
)
from .report import HEADLINE

TASKS, THREADS = "tasks", "threads"


def drive_threads(
    states: list[SessionState],
    op: Callable[[SessionState], str | None],
    duration: float,
    rec: Recorder | None,
) -> RoundResult:
    """Run ``op(state)`` in a loop, one thread per state, for ``duration`` seconds."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    deadline = time.perf_counter() + duration
    go = threading.Barrier(len(states) + 1)

    def worker(state: SessionState) -> None:
        nonlocal errors
        mine: list[float] = []
        go.wait()
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                problem = op(state)
            except Exception as exc:
                with lock:
                    errors += 1
                    if rec is not None:
                        rec.error(exc)
                state.uncertain = True
                time.sleep(0.05)
                continue
            mine.append(time.perf_counter() - t0)
            if problem is not None and rec is not None:
                with lock:
                    rec.violation(problem)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in states]
    for t in threads:
        t.start()
    go.wait()
    start, cpu0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    latencies.sort()
    return RoundResult(
        ops=len(latencies),
        elapsed=elapsed,
        cpu=cpu,
        p50=percentile(latencies, 0.50),
        p99=percentile(latencies, 0.99),
        errors=errors,
    )


async def threads_workload(bench: Bench, sessions: int) -> dict[str, Cell]:
    """The same Runner turn from ``sessions`` tasks and from ``sessions`` threads."""
    from agents import Agent, RunConfig, Runner, SessionSettings, set_tracing_disabled
    from agents.testing import ModelStep, ScriptedModel, assistant_message

    from pgsessions import PostgresSession, SessionRouter

    set_tracing_disabled(True)
    routed = bench._by_name()[HEADLINE]
    base = routed._router.config  # type: ignore[attr-defined]
    settings = SessionSettings(limit=bench.config.limit)
    agent = Agent(name="bench", instructions="You answer benchmark questions.")
    pl = bench.payloads

    def turn_args(st: SessionState) -> tuple[str, str, RunConfig]:
        n = st.turns
        reply = pl.assistant_text(st.sid, n)
        model = ScriptedModel([ModelStep(output=[assistant_message(reply, item_id=f"m{n:08d}")])])
        cfg = RunConfig(model=model, tracing_disabled=True, session_settings=settings)
        return pl.user_text(st.sid, n), reply, cfg

    async def op_task(st: SessionState) -> str | None:
        text, reply, cfg = turn_args(st)
        result = await Runner.run(agent, text, session=st.session, run_config=cfg)
        st.turns += 1
        return None if result.final_output == reply else f"{st.sid}: unexpected final output"

    def op_thread(st: SessionState) -> str | None:
        text, reply, cfg = turn_args(st)
        result = Runner.run_sync(agent, text, session=st.session, run_config=cfg)
        st.turns += 1
        return None if result.final_output == reply else f"{st.sid}: unexpected final output"

    started = await asyncio.to_thread(SessionRouter.start, replace(base, name="bench-threads"))
    try:
        prefix = bench.env.prefix
        task_states = bench.sessions_for(routed, TASKS, sessions)
        sids = [f"{prefix}-{HEADLINE}-{THREADS}-{i}" for i in range(sessions)]
        thread_states = [SessionState(sid=s, session=PostgresSession(s, started)) for s in sids]

        async def run_cell(name: str, duration: float, rec: Recorder | None) -> RoundResult:
            if name == TASKS:
                return await drive(task_states, op_task, duration, rec)
            return await asyncio.to_thread(drive_threads, thread_states, op_thread, duration, rec)

        cells = await bench.interleave(f"threads x{sessions}", [TASKS, THREADS], run_cell)
        for st in thread_states:  # every turn of the threads stored once, in order
            items = await st.session.get_items()
            problem = None if st.uncertain else check_history(items, st.sid, st.turns)
            if problem:
                bench.guard[HEADLINE].append(f"final history of {st.sid}: {problem}")
        return cells
    finally:
        await asyncio.to_thread(started.stop)
