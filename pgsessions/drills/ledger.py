"""The drill ledger: every write the workload sent, every read it made, and what happened.

Times are seconds since the ledger was created (``time.monotonic`` based). A read records
the newest batch of its session acknowledged when the read started, so that staleness can be
judged afterwards; the router observer fills in which role and host served it.
"""

from __future__ import annotations

import contextvars
import time
from collections import defaultdict
from dataclasses import dataclass, field


@dataclass(slots=True)
class WriteRecord:
    """One ``add_items`` batch (batch number ``n`` of ``session``, two items)."""

    session: str
    n: int
    start: float
    end: float | None = None
    ok: bool | None = None  # None: still in flight (or never finished)
    error: str | None = None
    token: str | None = None


@dataclass(slots=True)
class ReadRecord:
    """One ``get_items`` call. ``expect_n``: newest acknowledged batch at the start (0: none)."""

    session: str
    start: float
    expect_n: int
    end: float | None = None
    ok: bool | None = None
    error: str | None = None
    got: list[tuple[int, int]] = field(default_factory=list)  # (batch, item) in read order
    role: str | None = None
    reason: str | None = None
    host: str | None = None


@dataclass(slots=True)
class Event:
    t: float
    kind: str  # fault, promoted, healed, retry, failover, split_brain, topology, role, note
    detail: str = ""


#: the read in progress in this task, so router hooks can say who served it
current_read: contextvars.ContextVar[ReadRecord | None] = contextvars.ContextVar(
    "pgsessions_drill_read", default=None
)


class Ledger:
    """Append-only record of a drill run."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.wall0 = time.time()
        self.writes: list[WriteRecord] = []
        self.reads: list[ReadRecord] = []
        self.events: list[Event] = []
        self.last_ack: dict[str, int] = defaultdict(int)
        self.last_ack_at: dict[str, float] = {}

    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, kind: str, detail: str = "") -> Event:
        e = Event(self.now(), kind, detail)
        self.events.append(e)
        return e

    def first_event(self, kind: str, after: float = 0.0) -> Event | None:
        return next((e for e in self.events if e.kind == kind and e.t >= after), None)

    # writes ------------------------------------------------------------------------------
    def write_started(self, session: str, n: int) -> WriteRecord:
        rec = WriteRecord(session, n, self.now())
        self.writes.append(rec)
        return rec

    def write_acked(self, rec: WriteRecord, token: str | None) -> None:
        rec.end, rec.ok, rec.token = self.now(), True, token
        if rec.n > self.last_ack[rec.session]:
            self.last_ack[rec.session] = rec.n
        self.last_ack_at[rec.session] = rec.end

    def write_failed(self, rec: WriteRecord, exc: BaseException) -> None:
        rec.end, rec.ok, rec.error = self.now(), False, short_error(exc)

    # reads -------------------------------------------------------------------------------
    def read_started(self, session: str) -> ReadRecord:
        rec = ReadRecord(session, self.now(), self.last_ack[session])
        self.reads.append(rec)
        return rec

    def read_done(self, rec: ReadRecord, got: list[tuple[int, int]]) -> None:
        rec.end, rec.ok, rec.got = self.now(), True, got

    def read_failed(self, rec: ReadRecord, exc: BaseException) -> None:
        rec.end, rec.ok, rec.error = self.now(), False, short_error(exc)

    # progress ----------------------------------------------------------------------------
    def sessions_acked_since(self, t: float) -> int:
        """How many sessions have a write acknowledged after ``t``."""
        return sum(1 for at in self.last_ack_at.values() if at > t)

    def first_ack_after(self, t: float) -> float | None:
        ends = [w.end for w in self.writes if w.ok and w.end is not None and w.end > t]
        return min(ends) if ends else None


def short_error(exc: BaseException) -> str:
    """``ClassName: first line`` of an exception, bounded (never a DSN with a password)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if "password" in text.lower():
        text = "(message withheld: it mentions a password)"
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


class LedgerObserver:
    """A router observer: tags the current read with role, reason and host, logs events."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def on_route(self, operation: str, role: str, reason: str) -> None:
        rec = current_read.get()
        if rec is not None:
            rec.role, rec.reason = role, reason

    def on_operation(self, operation: str, role: str, seconds: float, error: str | None) -> None:
        rec = current_read.get()
        if rec is not None and error is None:
            rec.role = role
        if error is not None:
            self.ledger.event("op_error", f"{operation} on {role}: {error}")

    def on_retry(self, operation: str, reason: str) -> None:
        self.ledger.event("retry", f"{operation}: {reason}")

    def on_pool_wait(self, host: str, role: str, seconds: float) -> None:
        rec = current_read.get()
        if rec is not None:
            rec.host = host

    def on_connection_lost(self, host: str, role: str) -> None:
        self.ledger.event("connection_lost", f"{host} ({role})")

    def on_failover(self, seconds: float) -> None:
        self.ledger.event("failover", f"new primary found after {seconds:.2f}s")

    def on_overload(self, operation: str, host: str, role: str) -> None:
        self.ledger.event("overload", f"{operation} refused by busy {host} ({role})")

    def on_token_capped(self) -> None:
        self.ledger.event("token_capped", "a token beyond the primary's position was capped")

    def on_split_brain(self) -> None:
        self.ledger.event("split_brain", "router refused writes: more than one writable host")

    def on_write_batch(self, size: int, outcome: str) -> None:
        if outcome != "committed":
            self.ledger.event("write_batch", f"a batch of {size} writes {outcome}")

    def on_batch_wait(self, operation: str, seconds: float) -> None:
        pass

    def on_write_coalescing(self, operation: str, outcome: str) -> None:
        pass

    def __getattr__(self, name: str) -> object:
        # hooks added to the router later are accepted and ignored
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)
