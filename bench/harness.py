"""The harness: workloads run on every contender, interleaved in rounds, median of rounds.

Each cell (workload, parameter, contender) runs for ``duration`` seconds per round; a round
visits every contender once (the order rotates each round so none is always first after a
pause). Per-operation checks (read-your-writes, exact round trip, seeded tails) and a final
history check per session make up the correctness guard: a contender that loses, duplicates,
reorders or mangles an item, or raises, is marked failed whatever its speed.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from . import AGENT_CONTENDERS, WORKLOADS
from .contenders import BenchEnv, Contender
from .payloads import Payloads, assistant_marker, check_seeded_tail, item_text, user_marker
from .report import FLOOR, HEADLINE
from .wal import wal_by_record

__all__ = ["WORKLOADS", "Bench", "BenchConfig"]

NO_SESSION = "sdk-no-session"


@dataclass
class BenchConfig:
    """What to run. Defaults are the `make bench` run (under 10 minutes on 2 cores)."""

    workloads: Sequence[str] = WORKLOADS
    duration: float = 2.0
    rounds: int = 5
    warmup: float = 1.0
    #: concurrent sessions of the turn workload; the first one is the headline
    turn_sessions: Sequence[int] = (32, 1, 128)
    history_sizes: Sequence[int] = (100, 10_000, 100_000)
    history_readers: int = 4
    read_heavy_sessions: int = 32
    reads_per_write: int = 9
    runner_sessions: int = 32
    limit: int = 50
    #: the agent workload: sessions, seconds per cell and round, and the pause between a
    #: session's write and its next read (uniform in this range, as a model call makes)
    agent_sessions: int = 256
    agent_duration: float = 6.0
    agent_pause: tuple[float, float] = (0.2, 2.0)
    #: WAL measurement: adds per contender and round
    wal_adds: int = 400


# ------------------------------------------------------------------------------ results
def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (0 when empty)."""
    if not sorted_values:
        return 0.0
    k = max(0, min(len(sorted_values) - 1, int(-(-q * len(sorted_values) // 1)) - 1))
    return sorted_values[k]


@dataclass
class RoundResult:
    ops: int
    elapsed: float
    #: CPU seconds this Python process spent (all threads), over the round
    cpu: float
    p50: float
    p99: float
    errors: int
    #: CPU seconds the primary's own processes spent over the round (agent, adds)
    server_cpu: float | None = None
    #: WAL bytes the primary wrote over the round (adds workload)
    server_wal: int | None = None
    #: the primary's WAL insert position (bytes) when the round began (adds workload)
    wal_start: int | None = None
    #: CPU seconds the replicas' own processes spent over the round (turn workload)
    replicas_cpu: float | None = None

    @property
    def tput(self) -> float:
        return self.ops / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def cpu_per_op(self) -> float:
        return self.cpu / self.ops if self.ops else 0.0

    @property
    def wal_per_op(self) -> float | None:
        if self.server_wal is None or not self.ops:
            return None
        return self.server_wal / self.ops

    @property
    def server_cpu_per_1000(self) -> float | None:
        if self.server_cpu is None or not self.ops:
            return None
        return 1000 * self.server_cpu / self.ops

    @property
    def replicas_cpu_per_1000(self) -> float | None:
        if self.replicas_cpu is None or not self.ops:
            return None
        return 1000 * self.replicas_cpu / self.ops


@dataclass
class Cell:
    """One contender on one workload parameter: its rounds and their medians."""

    contender: str
    rounds: list[RoundResult] = field(default_factory=list)
    errors: int = 0
    violations: int = 0
    problems: list[str] = field(default_factory=list)
    #: reads by role/reason during this cell's measured rounds (routing contenders only)
    routing: dict[str, int] = field(default_factory=dict)
    #: the last round's WAL per operation by record type (see wal.wal_by_record)
    wal_records: dict[str, dict[str, float]] | None = None

    def median(self, attr: str) -> float:
        vals = [getattr(r, attr) for r in self.rounds]
        return float(statistics.median(vals)) if vals else 0.0

    @property
    def ok(self) -> bool:
        return self.errors == 0 and self.violations == 0 and not self.problems

    def replica_share(self) -> float:
        """Share of reads served by replicas (0 for a contender that reads the primary only)."""
        total = sum(self.routing.values())
        on_replicas = sum(n for k, n in self.routing.items() if k.startswith("replica/"))
        return on_replicas / total if total else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = {
            "contender": self.contender,
            "ops_per_s": round(self.median("tput"), 1),
            "p50_ms": round(self.median("p50") * 1000, 3),
            "p99_ms": round(self.median("p99") * 1000, 3),
            "client_cpu_us_per_op": round(self.median("cpu_per_op") * 1e6, 1),
            "ok": self.ok,
            "errors": self.errors,
            "violations": self.violations,
            "problems": self.problems[:5],
            "reads_routed": dict(sorted(self.routing.items())),
            "replica_read_share": round(self.replica_share(), 4),
            "primary_cpu_s_per_1000": _median_of_all(
                [r.server_cpu_per_1000 for r in self.rounds], 3
            ),
            "replicas_cpu_s_per_1000": _median_of_all(
                [r.replicas_cpu_per_1000 for r in self.rounds], 3
            ),
            "wal_bytes_per_op": _median_of_all([r.wal_per_op for r in self.rounds], 1),
            "rounds": [
                {
                    "ops": r.ops,
                    "elapsed_s": round(r.elapsed, 3),
                    "ops_per_s": round(r.tput, 1),
                    "p50_ms": round(r.p50 * 1000, 3),
                    "p99_ms": round(r.p99 * 1000, 3),
                    "client_cpu_us_per_op": round(r.cpu_per_op * 1e6, 1),
                    "primary_cpu_s_per_1000": _rounded(r.server_cpu_per_1000, 3),
                    "replicas_cpu_s_per_1000": _rounded(r.replicas_cpu_per_1000, 3),
                    "wal_bytes_per_op": _rounded(r.wal_per_op, 1),
                    "errors": r.errors,
                }
                for r in self.rounds
            ],
        }
        if self.wal_records is not None:
            out["wal_records"] = self.wal_records
        return out


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _median_of_all(values: list[float | None], digits: int) -> float | None:
    """The median of ``values`` when every round has one, else None."""
    known = [x for x in values if x is not None]
    if not known or len(known) != len(values):
        return None
    return round(float(statistics.median(known)), digits)


@dataclass
class SessionState:
    """One benchmark conversation: its SDK session object and how many turns it has."""

    sid: str
    session: Any
    turns: int = 0
    step: int = 0
    #: seeded items stored before the first turn (see payloads.check_seeded_tail)
    seeded: int = 0
    #: an operation raised: the stored count is unknown, skip the final count check
    uncertain: bool = False


class Recorder:
    """Problems found while running; the first few are kept for the report."""

    def __init__(self, cell: Cell) -> None:
        self.cell = cell

    def error(self, exc: BaseException) -> None:
        self.cell.errors += 1
        if len(self.cell.problems) < 5:
            self.cell.problems.append(f"error: {type(exc).__name__}: {exc}"[:300])

    def violation(self, what: str) -> None:
        self.cell.violations += 1
        if len(self.cell.problems) < 5:
            self.cell.problems.append(f"wrong result: {what}"[:300])


Op = Callable[[Any], Awaitable[str | None]]


async def drive(
    states: Sequence[Any],
    op: Op,
    duration: float,
    rec: Recorder | None,
    *,
    pause: Callable[[], float] | None = None,
    server_cpu: Callable[[], float] | None = None,
    server_wal: Callable[[], Awaitable[int]] | None = None,
    replicas_cpu: Callable[[], float] | None = None,
) -> RoundResult:
    """Run ``op(state)`` in a loop, one task per state, for ``duration`` seconds.

    ``pause``: seconds each state waits after each operation (and once before its first,
    to spread the states out); not part of the latency. ``server_cpu``: a reading of the
    server's CPU seconds, taken before and after; ``server_wal`` likewise its WAL position,
    ``replicas_cpu`` the replicas' CPU seconds.
    """
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    async def rest() -> None:
        if pause is not None:
            await asyncio.sleep(max(0.0, min(pause(), deadline - time.perf_counter())))

    async def worker(state: Any) -> None:
        nonlocal errors
        await rest()
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                problem = await op(state)
            except Exception as exc:
                errors += 1
                if isinstance(state, SessionState):
                    state.uncertain = True
                if rec is not None:
                    rec.error(exc)
                await asyncio.sleep(0.05)
                continue
            latencies.append(time.perf_counter() - t0)
            if problem is not None and rec is not None:
                rec.violation(problem)
            await rest()

    wal0 = await server_wal() if server_wal is not None else None
    server0 = server_cpu() if server_cpu is not None else None
    replicas0 = replicas_cpu() if replicas_cpu is not None else None
    start, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(s) for s in states))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    server = server_cpu() - server0 if server_cpu is not None and server0 is not None else None
    replicas = (
        replicas_cpu() - replicas0 if replicas_cpu is not None and replicas0 is not None else None
    )
    wal = await server_wal() - wal0 if server_wal is not None and wal0 is not None else None
    latencies.sort()
    return RoundResult(
        ops=len(latencies),
        elapsed=elapsed,
        cpu=cpu,
        p50=percentile(latencies, 0.50),
        p99=percentile(latencies, 0.99),
        errors=errors,
        server_cpu=server,
        server_wal=wal,
        wal_start=wal0,
        replicas_cpu=replicas,
    )


# ------------------------------------------------------------------------------ the bench
Log = Callable[[str], None]


class Bench:
    """Runs the configured workloads over the given (opened) contenders."""

    def __init__(
        self,
        env: BenchEnv,
        contenders: Sequence[Contender],
        config: BenchConfig,
        log: Log = print,
    ) -> None:
        self.env = env
        self.contenders = list(contenders)
        self.config = config
        self.log = log
        self.payloads = Payloads()
        self.states: dict[tuple[str, str], list[SessionState]] = {}
        #: problems outside any cell (seeding, final history check), per contender
        self.guard: dict[str, list[str]] = {c.name: [] for c in self.contenders}
        #: CPU seconds so far of the primary's and of the replicas' processes (None: the
        #: servers are not on this machine); the turn workload reports CPU per turn by them
        self.primary_cpu: Callable[[], float] | None = None
        self.replicas_cpu: Callable[[], float] | None = None

    # sessions -----------------------------------------------------------------------
    def sessions_for(self, c: Contender, workload: str, count: int) -> list[SessionState]:
        """The first ``count`` conversations of ``c`` for ``workload`` (created on demand)."""
        states = self.states.setdefault((c.name, workload), [])
        while len(states) < count:
            sid = f"{self.env.prefix}-{c.name}-{workload}-{len(states)}"
            states.append(SessionState(sid=sid, session=c.session(sid)))
        return states[:count]

    # rounds -------------------------------------------------------------------------
    async def interleave(
        self,
        label: str,
        names: Sequence[str],
        run_cell: Callable[[str, float, Recorder | None], Awaitable[RoundResult]],
        duration: float | None = None,
        contender_of: Callable[[str], str] = lambda name: name,
    ) -> dict[str, Cell]:
        """Warm each cell up, then ``rounds`` rounds over all of them, rotating the order.

        ``names`` are cells (a contender, or a contender at one parameter: ``contender_of``
        tells which contender a cell measures).
        """
        cfg = self.config
        duration = cfg.duration if duration is None else duration
        cells = {n: Cell(contender=n) for n in names}
        if cfg.warmup > 0:
            for n in names:
                await run_cell(n, min(cfg.warmup, duration), Recorder(cells[n]))
        by_name = self._by_name()
        # rotate whole contenders, so that one contender's cells (history sizes) always run
        # back to back and its ratios between them pair measurements seconds apart
        groups: dict[str, list[str]] = {}
        for n in names:
            groups.setdefault(contender_of(n), []).append(n)
        blocks = list(groups.values())
        for r in range(cfg.rounds):
            k = r % len(blocks)
            order = [n for block in blocks[k:] + blocks[:k] for n in block]
            for n in order:
                c = by_name.get(contender_of(n))
                before = c.read_counts() if c is not None else None
                res = await run_cell(n, duration, Recorder(cells[n]))
                cells[n].rounds.append(res)
                after = c.read_counts() if c is not None else None
                if before is not None and after is not None:
                    for k, v in after.items():
                        if v - before.get(k, 0):
                            cells[n].routing[k] = cells[n].routing.get(k, 0) + v - before.get(k, 0)
        line = ", ".join(f"{n} {cells[n].median('tput'):.0f}/s" for n in names)
        self.log(f"  {label}: {line}")
        return cells

    def _by_name(self) -> dict[str, Contender]:
        return {c.name: c for c in self.contenders}

    # workloads ------------------------------------------------------------------------
    async def turn(self, sessions: int, workload: str = "turn") -> dict[str, Cell]:
        """add_items(user + assistant) then get_items(limit) per turn, ``sessions`` at once."""
        limit = self.config.limit
        by_name = self._by_name()
        pl = self.payloads

        async def op(st: SessionState) -> str | None:
            items = pl.turn(st.sid, st.turns)
            await st.session.add_items(items)
            got = await st.session.get_items(limit=limit)
            st.turns += 1
            want = min(limit, 2 * st.turns)
            if len(got) != want:
                return f"{st.sid}: read {len(got)} items after turn {st.turns}, expected {want}"
            if got[-2:] != items:
                return f"{st.sid}: turn {st.turns - 1} not read back exactly (read-your-writes)"
            return None

        async def run_cell(name: str, duration: float, rec: Recorder | None) -> RoundResult:
            states = self.sessions_for(by_name[name], workload, sessions)
            return await drive(
                states,
                op,
                duration,
                rec,
                server_cpu=self.primary_cpu,
                replicas_cpu=self.replicas_cpu,
            )

        return await self.interleave(f"turn x{sessions}", list(by_name), run_cell)

    async def adds(self, sessions: int, server_cpu: Callable[[], float] | None) -> dict[str, Cell]:
        """add_items(user + assistant) alone, ``sessions`` at once: what an append costs
        the primary (CPU of its processes, WAL bytes) when many conversations write at the
        same moment, for the routed contenders and the raw floor."""
        by_name = {n: c for n, c in self._by_name().items() if n.startswith(HEADLINE) or n == FLOOR}
        pl = self.payloads
        primary = await psycopg.AsyncConnection.connect(self.env.primary_dsn, autocommit=True)

        async def wal_lsn() -> int:
            cur = await primary.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn")
            row = await cur.fetchone()
            assert row is not None
            return int(row[0])

        async def op(st: SessionState) -> str | None:
            await st.session.add_items(pl.turn(st.sid, st.turns))
            st.turns += 1
            return None

        async def run_cell(name: str, duration: float, rec: Recorder | None) -> RoundResult:
            states = self.sessions_for(by_name[name], "adds", sessions)
            return await drive(states, op, duration, rec, server_cpu=server_cpu, server_wal=wal_lsn)

        try:
            cells = await self.interleave(f"adds x{sessions}", list(by_name), run_cell)
            for c in cells.values():  # what the WAL of an add is made of, from the last round
                last = c.rounds[-1] if c.rounds else None
                if last is not None and last.wal_start is not None and last.server_wal:
                    end = last.wal_start + last.server_wal
                    c.wal_records = await wal_by_record(primary, last.wal_start, end, last.ops)
            return cells
        finally:
            await primary.close()

    async def read_heavy(self, sessions: int) -> dict[str, Cell]:
        """Per session: one turn written, then ``reads_per_write`` reads of get_items(limit)."""
        limit = self.config.limit
        every = self.config.reads_per_write + 1
        by_name = self._by_name()
        pl = self.payloads

        async def op(st: SessionState) -> str | None:
            st.step += 1
            if st.step % every == 1:
                await st.session.add_items(pl.turn(st.sid, st.turns))
                st.turns += 1
                return None
            got = await st.session.get_items(limit=limit)
            want = min(limit, 2 * st.turns)
            if len(got) != want:
                return f"{st.sid}: read {len(got)} items, expected {want}"
            if want and not item_text(got[-1]).startswith(assistant_marker(st.sid, st.turns - 1)):
                return f"{st.sid}: last item is not the last turn written (read-your-writes)"
            return None

        async def run_cell(name: str, duration: float, rec: Recorder | None) -> RoundResult:
            states = self.sessions_for(by_name[name], "read-heavy", sessions)
            return await drive(states, op, duration, rec)

        return await self.interleave(
            f"read-heavy x{sessions} ({self.config.reads_per_write}:1)", list(by_name), run_cell
        )

    async def seed_history(self) -> None:
        """Seed one conversation per size and contender, server-side, then check it via the API."""
        limit = self.config.limit
        for c in self.contenders:
            t0 = time.perf_counter()
            try:
                for size in self.config.history_sizes:
                    await c.seed(self._hist_sid(c, size), size)
                await c.analyze()
            except Exception as exc:
                self.guard[c.name].append(f"seeding failed: {type(exc).__name__}: {exc}")
                continue
            self.log(f"  seeded {c.name} in {time.perf_counter() - t0:.1f}s")
        await checkpoint(self.env)
        await wait_replicas_caught_up(self.env)
        for c in self.contenders:
            for size in self.config.history_sizes:
                sid = self._hist_sid(c, size)
                try:
                    items = await c.session(sid).get_items(limit=limit)
                    problem = check_seeded_tail(items, size, limit)
                except Exception as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                if problem:
                    self.guard[c.name].append(f"seeded history {size}: {problem}")

    def _hist_sid(self, c: Contender, size: int) -> str:
        return f"{self.env.prefix}-{c.name}-hist-{size}"

    async def history(self, sizes: Sequence[int]) -> dict[int, dict[str, Cell]]:
        """get_items(limit) on conversations holding ``sizes`` items, several readers at once.

        Sizes and contenders are interleaved in the same rounds, each contender's sizes next
        to each other in every round, so the ratio between its biggest and smallest history
        pairs measurements taken about a second apart.
        """
        limit = self.config.limit
        by_name = self._by_name()
        readers: dict[str, tuple[int, list[Any]]] = {}
        # one contender's sizes back to back: its 100k/100 ratio pairs cells a second apart
        for name, c in by_name.items():
            for size in sizes:
                s = c.session(self._hist_sid(c, size))
                readers[f"{name}@{size}"] = (size, [s] * self.config.history_readers)

        async def run_cell(key: str, duration: float, rec: Recorder | None) -> RoundResult:
            size, sessions = readers[key]

            async def op(s: Any) -> str | None:
                items = await s.get_items(limit=limit)
                return check_seeded_tail(items, size, limit)

            return await drive(sessions, op, duration, rec)

        # reads are short: half the duration gives thousands of samples per cell
        cells = await self.interleave(
            "history " + " / ".join(f"{s:,}" for s in sizes),
            list(readers),
            run_cell,
            self.config.duration / 2,
            contender_of=lambda key: key.rsplit("@", 1)[0],
        )
        out: dict[int, dict[str, Cell]] = {}
        for key, cell in cells.items():
            name = key.rsplit("@", 1)[0]
            cell.contender = name
            out.setdefault(readers[key][0], {})[name] = cell
        return out

    async def runner(self, sessions: int) -> dict[str, Cell]:
        """Full ``Runner.run`` turns with a scripted model; plus the SDK without a session."""
        from agents import Agent, RunConfig, Runner, SessionSettings, set_tracing_disabled
        from agents.testing import ModelStep, ScriptedModel, assistant_message

        set_tracing_disabled(True)
        settings = SessionSettings(limit=self.config.limit)
        agent = Agent(name="bench", instructions="You answer benchmark questions.")
        by_name = self._by_name()
        pl = self.payloads
        null_states = [SessionState(sid=f"nosession-{i}", session=None) for i in range(sessions)]

        async def op(st: SessionState) -> str | None:
            n = st.turns
            reply = pl.assistant_text(st.sid, n)
            model = ScriptedModel(
                [ModelStep(output=[assistant_message(reply, item_id=f"msg_{n:08d}")])]
            )
            cfg = RunConfig(model=model, tracing_disabled=True, session_settings=settings)
            result = await Runner.run(
                agent, pl.user_text(st.sid, n), session=st.session, run_config=cfg
            )
            st.turns += 1
            if result.final_output != reply:
                return f"{st.sid}: unexpected final output"
            return None

        async def run_cell(name: str, duration: float, rec: Recorder | None) -> RoundResult:
            if name == NO_SESSION:
                return await drive(null_states, op, duration, rec)
            states = self.sessions_for(by_name[name], "runner", sessions)
            return await drive(states, op, duration, rec)

        return await self.interleave(f"runner x{sessions}", [*by_name, NO_SESSION], run_cell)

    async def agent(self, sessions: int, server_cpu: Callable[[], float] | None) -> dict[str, Cell]:
        """Agent turns with think time: read the history, append the turn, then pause (as a
        model call would) before the session's next read. Many sessions, each already holding
        a full read window (``limit`` seeded items: conversations under way, so every read
        returns what a model call would get). The primary's own CPU time is measured per
        round when ``server_cpu`` can read it."""
        limit = self.config.limit
        by_name = {n: c for n, c in self._by_name().items() if n in AGENT_CONTENDERS}
        pl = self.payloads
        rng = random.Random(11)
        low, high = self.config.agent_pause
        for c in by_name.values():
            for st in self.sessions_for(c, "agent", sessions):
                if not st.seeded:
                    await c.seed(st.sid, limit)
                    st.seeded = limit
        await wait_replicas_caught_up(self.env)

        async def op(st: SessionState) -> str | None:
            got = await st.session.get_items(limit=limit)
            want = min(limit, st.seeded + 2 * st.turns)
            if len(got) != want:
                return f"{st.sid}: read {len(got)} items before turn {st.turns}, expected {want}"
            if st.turns and not item_text(got[-1]).startswith(
                assistant_marker(st.sid, st.turns - 1)
            ):
                return f"{st.sid}: the previous turn is missing (read-your-writes)"
            await st.session.add_items(pl.turn(st.sid, st.turns))
            st.turns += 1
            return None

        async def run_cell(name: str, duration: float, rec: Recorder | None) -> RoundResult:
            states = self.sessions_for(by_name[name], "agent", sessions)
            return await drive(
                states,
                op,
                duration,
                rec,
                pause=lambda: rng.uniform(low, high),
                server_cpu=server_cpu,
            )

        return await self.interleave(
            f"agent x{sessions} (pause {low:g}-{high:g} s)",
            list(by_name),
            run_cell,
            self.config.agent_duration,
        )

    # guard ----------------------------------------------------------------------------
    async def verify_histories(self) -> None:
        """Read every benchmark conversation back in full: count, order and markers."""
        for c in self.contenders:
            for (cname, _workload), states in self.states.items():
                if cname != c.name:
                    continue
                for st in states:
                    if st.uncertain:
                        continue
                    try:
                        items = await st.session.get_items()
                    except Exception as exc:
                        self.guard[c.name].append(f"final read of {st.sid}: {exc!r}")
                        break
                    problem = check_history(items[st.seeded :], st.sid, st.turns)
                    if st.seeded and problem is None:
                        problem = check_seeded_tail(items[: st.seeded], st.seeded, st.seeded)
                    if problem:
                        self.guard[c.name].append(f"final history of {st.sid}: {problem}")
                        break


def check_history(items: list[Any], sid: str, turns: int) -> str | None:
    """None when ``items`` are exactly turns 0..turns-1 of ``sid`` (user, assistant) in order."""
    if len(items) != 2 * turns:
        return f"{len(items)} items stored, {2 * turns} written"
    for n in range(turns):
        u, a = item_text(items[2 * n]), item_text(items[2 * n + 1])
        if not u.startswith(user_marker(sid, n)) or not a.startswith(assistant_marker(sid, n)):
            return f"turn {n} missing or out of order"
    return None


async def checkpoint(env: BenchEnv) -> None:
    """Flush what seeding wrote now, rather than in the middle of the first measured cells."""
    try:
        async with await psycopg.AsyncConnection.connect(env.primary_dsn, autocommit=True) as p:
            await p.execute("CHECKPOINT")
    except psycopg.errors.InsufficientPrivilege:
        pass  # not a superuser (or pg_checkpoint member) on an external cluster


async def wait_replicas_caught_up(env: BenchEnv, within: float = 120.0) -> None:
    """Wait until every replica has replayed the primary's current flush position."""
    if not env.replica_dsns:
        return
    async with await psycopg.AsyncConnection.connect(env.primary_dsn, autocommit=True) as p:
        cur = await p.execute("SELECT pg_current_wal_flush_lsn()")
        row = await cur.fetchone()
        assert row is not None
        target = row[0]
    deadline = time.monotonic() + within
    for dsn in env.replica_dsns:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as r:
            while True:
                cur = await r.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (str(target),)
                )
                row = await cur.fetchone()
                if row and row[0]:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"replica did not replay {target} in {within}s")
                await asyncio.sleep(0.1)
