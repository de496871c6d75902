"""Checking the ledger against the database, and the figures of one scenario.

Invariants: every acknowledged batch is stored exactly once, whole and in order; no read is
older than its session's own acknowledged writes at the time the read started; the workload
recovers. Asynchronous replication may lose acknowledged writes when the primary dies: that
loss is allowed only when each lost batch lies beyond what the promoted replica had received.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

import psycopg

from ..router.lsn import format_lsn, parse_lsn
from ..sessions.sql.tools import drill_items_sql
from .ledger import Ledger
from .workload import tag_of_text

if TYPE_CHECKING:
    from .scenarios import DrillContext

#: a write slower than this "waited" (for a primary, a retry or a failover)
WAIT_THRESHOLD = 0.5
DETECT_KINDS = ("retry", "op_error", "connection_lost", "failover", "split_brain", "topology")

StoredItems = dict[str, list[tuple[int, int]]]


def find_writable(dsns: dict[str, str]) -> tuple[str, str]:
    """(name, dsn) of the one writable server; raises when there is none or several."""
    writable = []
    for name, dsn in dsns.items():
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if row is not None and not row[0]:
                    writable.append((name, dsn))
        except psycopg.Error:
            continue
    if len(writable) != 1:
        names = [n for n, _ in writable]
        raise RuntimeError(f"expected exactly one writable server to verify against, got {names}")
    return writable[0]


def load_stored(dsn: str, schema: str, prefix: str) -> StoredItems:
    """(batch, item) of every stored item of the drill's sessions, in ``seq`` order."""
    query = drill_items_sql(schema)
    out: StoredItems = defaultdict(list)
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        for session_id, text in conn.execute(query, (prefix + "-%",)):
            tag = tag_of_text(text or "")
            out[session_id].append(tag if tag is not None else (-1, -1))
    return dict(out)


def _lsn(token: str | None) -> int | None:
    """The LSN of a token; a sharded token (``s1:0/4000028``) names its shard first."""
    try:
        return parse_lsn(token.rsplit(":", 1)[-1]) if token else None
    except ValueError:
        return None


def analyse(
    ledger: Ledger,
    stored: StoredItems,
    ctx: DrillContext,
    *,
    scenario: str,
    recovered: bool,
    host_names: dict[str, str],
    failover_timeout: float = 30.0,
    items_per_batch: int = 2,
) -> dict[str, Any]:
    """The scenario's report (JSON-ready) with ``passed`` and the list of ``failures``."""
    failures: list[str] = []
    acked: dict[str, dict[int, Any]] = defaultdict(dict)
    unacked: dict[str, set[int]] = defaultdict(set)
    for w in ledger.writes:
        if w.ok:
            acked[w.session][w.n] = w
        else:
            unacked[w.session].add(w.n)

    lost: list[Any] = []
    duplicated = torn = reordered = unexpected = applied_unacked = 0
    lost_keys: set[tuple[str, int]] = set()
    sessions = set(acked) | set(unacked) | set(stored)
    for sid in sessions:
        items = stored.get(sid, [])
        counts = Counter(items)
        duplicated += sum(c - 1 for c in counts.values() if c > 1)
        reordered += sum(1 for a, b in itertools.pairwise(items) if b <= a)
        batches: dict[int, int] = Counter(n for n, _ in set(items))
        known = set(acked[sid]) | unacked[sid]
        unexpected += sum(1 for n, _ in items if n not in known)
        for n, w in acked[sid].items():
            present = batches.get(n, 0)
            if present == 0:
                lost.append(w)
                lost_keys.add((sid, n))
            elif present != items_per_batch:
                torn += 1
        for n in unacked[sid]:
            present = batches.get(n, 0)
            if present == items_per_batch:
                applied_unacked += 1
            elif present:
                torn += 1

    # loss: allowed only with async replication, when the primary died, beyond what the
    # promoted replica had received
    explained = 0
    received = ctx.received.get(ctx.promoted or "", None)
    if lost and received is not None and not ctx.sync and not ctx.expect_no_loss:
        explained = sum(1 for w in lost if (_lsn(w.token) or 0) > received)
    loss_note = None
    if lost:
        tokens = sorted(t for t in (_lsn(w.token) for w in lost) if t is not None)
        span = f"{format_lsn(tokens[0])}..{format_lsn(tokens[-1])}" if tokens else "?"
        if received is not None:
            loss_note = (
                f"{len(lost)} acknowledged batches lost (commit positions {span}); "
                f"{explained} of them lie beyond {format_lsn(received)}, all that "
                f"{ctx.promoted} had received when it was promoted"
            )
            if explained == len(lost) and not ctx.sync:
                loss_note += (
                    ": asynchronous replication acknowledges a commit before any replica "
                    "has it (run with --sync to lose nothing)"
                )
        else:
            loss_note = f"{len(lost)} acknowledged batches lost (commit positions {span})"
        if explained != len(lost):
            failures.append(f"lost {len(lost) - explained} acknowledged batches: {loss_note}")

    for label, value in (
        ("duplicated items", duplicated),
        ("reordered items", reordered),
        ("torn batches (partly stored)", torn),
        ("unexpected items", unexpected),
    ):
        if value:
            failures.append(f"{label}: {value}")

    # reads
    stale = []
    reads_missing_lost = reordered_reads = 0
    for r in ledger.reads:
        if not r.ok:
            continue
        if any(b <= a for a, b in itertools.pairwise(r.got)):
            reordered_reads += 1
        if r.expect_n <= 0:
            continue
        newest = max((n for n, _ in r.got), default=0)
        if newest < r.expect_n:
            if (r.session, r.expect_n) in lost_keys:
                reads_missing_lost += 1
            else:
                stale.append(r)
    if stale:
        failures.append(
            f"stale reads: {len(stale)} (a session read older data than its own "
            "acknowledged writes)"
        )
    if reordered_reads:
        failures.append(f"reads returning items out of order: {reordered_reads}")
    if not recovered:
        failures.append("the workload did not recover: some sessions never wrote again")
    failures.extend(n for n in ctx.notes if n.startswith("the trigger"))

    timings = _timings(ledger, ctx)
    warnings = _warnings(ledger, ctx, failover_timeout)
    writes_ok = [w for w in ledger.writes if w.ok]
    writes_failed = [w for w in ledger.writes if w.ok is False]
    waited = [w for w in ledger.writes if w.end is not None and w.end - w.start > WAIT_THRESHOLD]

    def who(r: Any) -> str:
        host = r.host
        name = host_names.get(host or "", None)
        if host and name:
            return f"{name} ({r.role or '?'})"
        return host or r.role or "unknown"

    out_start, out_end = timings["outage"]
    during = [r for r in ledger.reads if out_start <= r.start <= out_end]
    return {
        "scenario": scenario,
        "sync": ctx.sync,
        "passed": not failures,
        "failures": failures,
        "warnings": warnings,
        "sessions": len(sessions),
        "writes": {
            "acknowledged": len(writes_ok),
            "failed": len(writes_failed),
            "failed_errors": dict(Counter(w.error or "?" for w in writes_failed).most_common(5)),
            "waited": len(waited),
            "max_wait_s": round(max((w.end - w.start for w in waited if w.end), default=0), 3),
            "applied_but_unacknowledged": applied_unacked,
        },
        "reads": {
            "ok": sum(1 for r in ledger.reads if r.ok),
            "failed": sum(1 for r in ledger.reads if r.ok is False),
            "by_role": dict(Counter(r.role or "unknown" for r in ledger.reads if r.ok)),
            "by_host": dict(Counter(who(r) for r in ledger.reads if r.ok)),
            "during_outage": dict(Counter(who(r) for r in during if r.ok)),
            "failed_during_outage": sum(1 for r in during if r.ok is False),
        },
        "lost": len(lost),
        "lost_explained": explained,
        "loss_explanation": loss_note,
        "duplicated": duplicated,
        "reordered": reordered,
        "torn": torn,
        "stale_reads": len(stale),
        "stale_examples": [
            {
                "session": r.session,
                "at_s": round(r.start, 3),
                "expected_batch": r.expect_n,
                "newest_read": max((n for n, _ in r.got), default=0),
                "served_by": who(r),
                "reason": r.reason,
            }
            for r in stale[:5]
        ],
        "reads_missing_lost_writes": reads_missing_lost,
        "recovered": recovered,
        "timings": {k: v for k, v in timings.items() if k != "outage"},
        "outage_window_s": [round(out_start, 3), round(out_end, 3)],
        "notes": ctx.notes,
        "events": [
            {"t": round(e.t, 3), "kind": e.kind, "detail": e.detail} for e in _key_events(ledger)
        ],
    }


def _timings(ledger: Ledger, ctx: DrillContext) -> dict[str, Any]:
    fault = ledger.first_event("fault")
    t_fault = fault.t if fault else 0.0
    detect = next((e for e in ledger.events if e.t >= t_fault and e.kind in DETECT_KINDS), None)
    promoted = ledger.first_event("promoted", t_fault)
    role_change = next(
        (
            e
            for e in ledger.events
            if e.kind == "role" and e.t >= t_fault and e.detail.endswith("-> primary")
        ),
        None,
    )
    if not ctx.role_change_is_promotion:
        role_change = None  # the scenario made a rogue primary: that is no failover
    t_promoted = min((e.t for e in (promoted, role_change) if e is not None), default=None)
    healed = ledger.first_event("healed", t_fault) or ledger.first_event("trigger_done", t_fault)
    first_after_promo = ledger.first_ack_after(t_promoted) if t_promoted is not None else None
    first_after_heal = ledger.first_ack_after(healed.t) if healed else None
    acks = sorted(w.end for w in ledger.writes if w.ok and w.end is not None)
    end = acks[-1] if acks else t_fault
    gap, gap_at = 0.0, t_fault
    prev = max((a for a in acks if a <= t_fault), default=t_fault)
    for a in acks:
        if a > t_fault:
            if a - prev > gap:
                gap, gap_at = a - prev, prev
            prev = a
    if t_promoted is not None:
        out_end = first_after_promo if first_after_promo is not None else end
    elif healed is not None:
        out_end = healed.t
    else:
        out_end = gap_at + gap
    return {
        "fault_at_s": round(t_fault, 3),
        "detect_s": round(detect.t - t_fault, 3) if detect else None,
        "detected_by": f"{detect.kind}: {detect.detail}" if detect else None,
        "promoted_at_s": round(t_promoted, 3) if t_promoted is not None else None,
        "promotion_to_first_write_s": (
            round(first_after_promo - t_promoted, 3)
            if first_after_promo is not None and t_promoted is not None
            else None
        ),
        "healed_at_s": round(healed.t, 3) if healed else None,
        "heal_to_first_write_s": (
            round(first_after_heal - healed.t, 3)
            if first_after_heal is not None and healed
            else None
        ),
        "longest_write_gap_s": round(gap, 3),
        "outage": (t_fault, max(out_end, t_fault)),
    }


def _warnings(ledger: Ledger, ctx: DrillContext, failover_timeout: float) -> list[str]:
    """Not invariants, but worth a look: writes that failed before ``failover_timeout``."""
    out = []
    early = Counter(
        (w.error or "?").split(":", 1)[0]
        for w in ledger.writes
        if w.ok is False
        and w.end is not None
        and w.end - w.start < failover_timeout
        and not (w.error or "").startswith("SplitBrainError")
    )
    for err, n in early.items():
        out.append(
            f"{n} writes failed with {err} after less than failover_timeout "
            f"({failover_timeout:g}s): the router gave up early"
        )
    return out


def _key_events(ledger: Ledger, limit_per_kind: int = 3) -> list[Any]:
    """Scenario steps and role changes, plus the first few of each router signal."""
    seen: Counter[str] = Counter()
    out = []
    for e in ledger.events:
        if e.kind in DETECT_KINDS:
            seen[e.kind] += 1
            if seen[e.kind] > limit_per_kind:
                continue
        out.append(e)
    return out
