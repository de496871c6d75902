"""Moving buckets between the shards of a ShardedRouter online, with PostgreSQL's logical
replication.

A move of some buckets from a source shard to a target shard:

1. **copying**: recorded in the source's ``shard_moves`` (migration 0013); a publication on
   the source filtered on the buckets (``WHERE (bucket = ANY (...))`` on every session
   table), a subscription on the target that copies them and then streams the changes
   (``synchronous_commit = on``: what the target confirms is flushed there); the mover
   waits for every table's initial copy and for the target to catch up.
2. **fenced**: in one transaction on the source, the buckets' rows leave ``shard_buckets``
   (the trigger of migration 0011 waits for the writes in flight on them, and every later
   write to them is refused with SQLSTATE ``PGS01``) and the phase is recorded. No shard
   owns the buckets now; writers wait in the router's redirect loop.
3. **flipped**: once the subscription's slot confirms a position past the fence's commit
   (the target applied and flushed every write the source acknowledged), the target takes
   the buckets at epoch + 1; once the target's streaming replicas hold that, the phase is
   recorded on the source. Writers retry there.
4. **done**: the subscription (and with it the slot), then the publication are dropped, and
   the source's rows of the buckets are deleted in batches of conversations.

A mover that dies anywhere leaves the phase recorded: :func:`move_buckets` or
:func:`resume_moves` run again resume the move from it (and :func:`abort_move` rolls back
one that has not flipped yet). A target on another timeline than when its subscription was
made (its primary failed over: the source's slot may count as applied rows it never got)
copies again while the move is copying, and makes a fenced move refuse to flip (abort it).
At every moment a bucket is owned by one shard at most: the source gives it up (committed)
before the target takes it. One mover at a time works on a source shard (a session
advisory lock, released when the mover's connection ends).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ..errors import ShardError
from ..router.directory import ranges
from ..router.dsn import redact
from ..router.loops import running_loop
from ..router.session_router import SessionRouter
from ..router.sharded import ShardedRouter
from . import move_sql as m

Conn = psycopg.AsyncConnection[Any]
#: rows of one table deleted per statement when the source's copy is removed
DELETE_BATCH = 500
#: how often the mover looks at the replication's progress (its waits are polls)
_POLL = 0.02


class MoveError(ShardError):
    """A move cannot start or go on; ``shard`` names the shard concerned. Raised before
    anything changes for a prerequisite that does not hold."""


@dataclass(frozen=True)
class MoveProgress:
    """One step of a move, given to the ``progress`` callback."""

    move_id: str
    #: copying, copied, caught-up, fenced, flipped, done, aborted (and resumed)
    phase: str
    source: str
    target: str
    buckets: tuple[int, ...]
    #: seconds since this mover took the move up
    seconds: float
    rows_copied: int | None = None
    #: bytes of the source's WAL the target has not confirmed yet
    lag_bytes: int | None = None
    #: why the phase happens (copy-restarted: the target's primary failed over)
    note: str | None = None


@dataclass
class MoveResult:
    """What one move did. ``pause`` is the time from the source's fence commit to the
    target's take (None when this mover did not run the fence: a resumed move); ``phases``
    the seconds each phase took here."""

    move_id: str
    source: str
    target: str
    buckets: tuple[int, ...]
    epochs: tuple[int, ...]
    rows_moved: int = 0
    pause: float | None = None
    seconds: float = 0.0
    resumed: bool = False
    phases: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Record:
    id: str
    source: str
    target: str
    buckets: tuple[int, ...]
    epochs: tuple[int, ...]
    phase: str


Progress = Callable[[MoveProgress], object]


def parse_buckets(text: str) -> list[int]:
    """``"7"``, ``"0-63"``, ``"1,5,9-12"`` as a sorted list of buckets; ValueError if not."""
    out: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise ValueError(f"not a bucket or a range a-b: {part!r}") from None
        if a < 0 or b < a:
            raise ValueError(f"not a bucket or a range a-b: {part!r}")
        out.update(range(a, b + 1))
    if not out:
        raise ValueError("no bucket given")
    return sorted(out)


async def _one(conn: Conn, query: Any, params: Any = None) -> Any:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    return None if row is None else row[0]


async def _rows(conn: Conn, query: Any, params: Any = None) -> list[tuple[Any, ...]]:
    cur = await conn.execute(query, params)
    return list(await cur.fetchall())


async def _primary_dsn(router: SessionRouter) -> str:
    """The DSN of ``router``'s primary as configured (the subscription connects with it)."""
    if running_loop() is not router._loop:  # served on another loop (SessionRouter.start)
        h = await router._away(lambda r: r._primary_for_admin())
    else:
        h = await router._primary_for_admin()
    return h.dsn


async def _unfinished(conn: Conn, schema: str) -> _Record | None:
    if not await _one(conn, m.has_moves_table(schema)):
        return None
    got = await _rows(conn, m.unfinished(schema))
    if not got:
        return None
    i, src, dst, buckets, epochs, phase = got[0]
    return _Record(i, src, dst, tuple(buckets), tuple(epochs), phase)


async def _delete_copy(dst: Conn, schema: str, buckets: Sequence[int]) -> None:
    """Delete the target's rows of ``buckets`` (a move's copy), conversations last."""
    tables = [t for (t,) in await _rows(dst, m.SESSION_TABLES, (schema,))]
    for t in sorted(tables, key=lambda t: t == "conversations"):
        while True:
            cur = await dst.execute(m.delete_batch(schema, t), (list(buckets), DELETE_BATCH))
            if cur.rowcount == 0:
                break


async def _drop_subscription(dst: Conn, name: str) -> None:
    """Drop a move's subscription with its slot. When the publisher cannot drop the slot
    (the source's primary failed over: PostgreSQL 15 keeps a logical slot on the primary
    only, so the slot is gone with it, or its host is down), the subscription is detached
    from the slot and dropped alone."""
    try:
        await dst.execute(m.drop_subscription(name))
    except psycopg.Error:
        if dst.closed:
            raise
        for statement in m.detach_subscription(name):
            await dst.execute(statement)
        await dst.execute(m.drop_subscription(name))


class _Mover:
    def __init__(
        self, router: ShardedRouter, rec: _Record, progress: Progress | None, timeout: float
    ) -> None:
        self.router = router
        self.rec = rec
        self.schema = router.config.schema
        self.name = m.move_object(rec.id)
        self.progress = progress
        self.timeout = timeout
        self.t0 = time.monotonic()
        self.result = MoveResult(rec.id, rec.source, rec.target, rec.buckets, rec.epochs)
        self._phase_t = self.t0
        #: when this mover's fence committed (None: fenced by an earlier run)
        self.fenced_at: float | None = None

    def emit(self, phase: str, **extra: Any) -> None:
        now = time.monotonic()
        self.result.phases[phase] = round(now - self._phase_t, 4)
        self._phase_t = now
        if self.progress is not None:
            r = self.rec
            self.progress(
                MoveProgress(r.id, phase, r.source, r.target, r.buckets, now - self.t0, **extra)
            )

    async def run(self) -> MoveResult:
        r = self.rec
        shards = self.router.shards
        async with AsyncExitStack() as stack:
            src = await stack.enter_async_context(shards[r.source].primary_connection())
            dst = await stack.enter_async_context(shards[r.target].primary_connection())
            if not await _one(
                src,
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                (m.lock_key(self.schema),),
            ):
                raise MoveError(
                    r.source,
                    f"another mover is working on this shard (move "
                    f"{r.id} of buckets {ranges(r.buckets)})",
                )
            phase = await _one(
                src, f"SELECT phase FROM {m.q(self.schema)}.shard_moves WHERE id = %s", (r.id,)
            )
            if phase is None:
                raise MoveError(r.source, f"move {r.id} is not recorded here")
            if phase in m.FINISHED:
                return self.result
            if phase == "copying":
                await self.copy(src, dst)
                # the target is still the primary that copied (fails at once if it is down)
                why = await self._failed_over(dst)
                if why is not None:
                    raise MoveError(
                        r.target, f"move {r.id}: {why}: nothing was fenced: resume the move"
                    )
                await self.fence(src)
                phase = "fenced"
            if phase == "fenced":
                await self.flip(src, dst)
                phase = "flipped"
            if phase == "flipped":
                await self.cleanup(src, dst)
            await _one(
                src,
                "SELECT pg_advisory_unlock(hashtextextended(%s, 0))",
                (m.lock_key(self.schema),),
            )
        self.result.seconds = time.monotonic() - self.t0
        await self.router.refresh()
        return self.result

    async def _wait(self, what: str, shard: str, check: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + self.timeout
        while True:
            got = await check()
            if got:
                return got
            if time.monotonic() >= deadline:
                raise MoveError(shard, f"move {self.rec.id}: {what} not within {self.timeout}s")
            await asyncio.sleep(_POLL)

    async def _slot_reached(self, src: Conn, lsn: str) -> bool:
        got = await _one(src, m.SLOT_REACHED, (lsn, self.name))
        if got is None:
            raise MoveError(
                self.rec.source,
                f"move {self.rec.id}: its replication slot "
                f"{self.name} is gone: abort the move (`pgsessions shard abort`)",
            )
        return bool(got)

    async def _failed_over(self, dst: Conn) -> str | None:
        """Why the target's copy cannot be trusted: its primary is on another timeline than
        when the subscription was made (a promoted replica may lack rows the source's slot
        counts as applied). None when it is on the same one, or there is no subscription."""
        got = await _rows(dst, m.SUBSCRIPTION_TIMELINE, (self.name,))
        if not got:
            return None
        now = await _one(dst, m.TIMELINE)
        if got[0][0] == f"timeline {now}":
            return None
        was = got[0][0] or "timeline unknown"
        return f"its primary failed over since the copy started ({was}, now timeline {now})"

    async def copy(self, src: Conn, dst: Conn) -> None:
        r = self.rec
        tables = [t for (t,) in await _rows(src, m.SESSION_TABLES, (self.schema,))]
        if not await _one(src, m.PUBLICATION_EXISTS, (self.name,)):
            await src.execute(m.create_publication(self.schema, self.name, tables, r.buckets))
        why = await self._failed_over(dst)
        if why is not None:
            # the buckets are still the source's: the copy starts again from nothing
            self.emit("copy-restarted", note=f"shard {r.target!r}: {why}")
            await _drop_subscription(dst, self.name)
            await _delete_copy(dst, self.schema, r.buckets)
        if not await _one(dst, m.SUBSCRIPTION_EXISTS, (self.name,)):
            await src.execute(m.DROP_SLOT, (self.name,))  # a slot of an earlier attempt
            conninfo = await _primary_dsn(self.router.shards[r.source])
            try:
                await dst.execute(m.create_subscription(self.name, conninfo))
            except psycopg.Error as exc:
                raise MoveError(
                    r.target,
                    f"cannot subscribe to {redact(conninfo)}: {exc.diag.message_primary or exc}",
                ) from exc
            # a mover that dies before this comment restarts the copy (no timeline known)
            timeline = await _one(dst, m.TIMELINE)
            await dst.execute(m.comment_subscription(self.name, timeline))
        self.emit("copying")
        last = [0.0]

        async def copied() -> bool:
            # the source still answers: a copy from a crashed one never ends (the target's
            # workers retry its old address), and the wait would last ``wait`` seconds
            await src.execute("SELECT 1")
            got = await _rows(dst, m.SUBSCRIPTION_STATE, (self.name,))
            if not got:
                raise MoveError(r.target, f"move {r.id}: subscription {self.name} is gone")
            n, ready = got[0]
            if n >= len(tables) and ready == n:
                return True
            if self.progress is not None and time.monotonic() - last[0] >= 1.0:
                last[0] = time.monotonic()
                rows = await _one(dst, m.COPY_PROGRESS, (self.schema,))
                self.progress(
                    MoveProgress(
                        r.id,
                        "copying",
                        r.source,
                        r.target,
                        r.buckets,
                        time.monotonic() - self.t0,
                        rows_copied=int(rows),
                    )
                )
            return False

        await self._wait("the initial copy", r.target, copied)
        self.emit("copied")
        lsn = await _one(src, m.CURRENT_LSN)
        await self._wait("the catch-up", r.source, lambda: self._slot_reached(src, lsn))
        slot = await _rows(src, m.SLOT, (self.name,))
        self.emit("caught-up", lag_bytes=int(slot[0][1]) if slot else None)

    async def fence(self, src: Conn) -> None:
        r = self.rec
        async with src.transaction():
            await src.execute("SET LOCAL lock_timeout = '30s'")
            gone = await _rows(src, m.give_up(self.schema), (list(r.buckets),))
            held = dict(zip(r.buckets, r.epochs, strict=True))
            if sorted(gone) != sorted(held.items()):
                raise MoveError(
                    r.source,
                    f"move {r.id}: the shard no longer owns buckets "
                    f"{ranges(r.buckets)} at the epochs the move started with; "
                    "nothing was changed: abort the move",
                )
            await src.execute(m.set_phase(self.schema), ("fenced", "fenced", None, r.id))
        self.fenced_at = time.monotonic()
        self.emit("fenced")

    async def flip(self, src: Conn, dst: Conn) -> None:
        r = self.rec
        new = [e + 1 for e in r.epochs]
        mine = await _rows(dst, m.owned(self.schema), (list(r.buckets),))
        if sorted(mine) != sorted(zip(r.buckets, new, strict=True)):
            if mine:
                raise MoveError(
                    r.target,
                    f"move {r.id}: owns buckets {ranges([b for b, _ in mine])}"
                    " at other epochs than the move gives: the directory changed "
                    "under the move",
                )
            # the copy is on this primary: it is the one that subscribed
            why = (
                "its subscription is gone"
                if not await _one(dst, m.SUBSCRIPTION_EXISTS, (self.name,))
                else await self._failed_over(dst)
            )
            if why is not None:
                raise MoveError(
                    r.target,
                    f"move {r.id}: {why}: it may lack rows the source's slot counts as "
                    "applied; nothing was taken: abort the move (`pgsessions shard abort`: "
                    "the source takes the buckets back) and move them again",
                )
            # every write the source acknowledged before its fence is on the target
            lsn = await _one(src, m.CURRENT_LSN)
            await self._wait(
                "the catch-up after the fence", r.source, lambda: self._slot_reached(src, lsn)
            )
            # and the source's replicas hold the fence: a failover of the source after the
            # flip cannot give the buckets back to it (two owners)
            await self._wait(
                "the source's replicas to flush the fence",
                r.source,
                lambda: _one(src, m.STANDBYS_FLUSHED, (lsn,)),
            )
            await dst.execute(m.take(self.schema), (list(r.buckets), new))
            if self.fenced_at is not None:  # writers go on from here
                self.result.pause = time.monotonic() - self.fenced_at
        # the target's replicas hold the take (and the copy before it) before the source
        # records the flip and later deletes its rows: a failover of the target from here on
        # cannot lose them
        tlsn = await _one(dst, m.CURRENT_LSN)
        await self._wait(
            "the target's replicas to flush the take",
            r.target,
            lambda: _one(dst, m.STANDBYS_FLUSHED, (tlsn,)),
        )
        await src.execute(m.set_phase(self.schema), ("flipped", "flipped", None, r.id))
        self.emit("flipped")

    async def cleanup(self, src: Conn, dst: Conn) -> None:
        r = self.rec
        # the target owns the buckets: check before the source's copy is deleted
        new = sorted(zip(r.buckets, [e + 1 for e in r.epochs], strict=True))
        mine = await _rows(dst, m.owned(self.schema), (list(r.buckets),))
        if sorted(mine) != new:
            raise MoveError(
                r.target,
                f"move {r.id}: does not own buckets {ranges(r.buckets)}"
                " at the move's epochs: the source's rows are kept",
            )
        await self.router.refresh()
        # the subscription first (it drops its slot), then the publication: the deletes
        # below are not replicated anywhere
        await _drop_subscription(dst, self.name)
        await src.execute(m.drop_publication(self.name))
        await src.execute(m.DROP_SLOT, (self.name,))
        tables = [t for (t,) in await _rows(src, m.SESSION_TABLES, (self.schema,))]
        others = [t for t in tables if t != "conversations"]
        buckets = list(r.buckets)
        qs = m.q(self.schema)
        moved = 0
        while True:
            sids = [
                s
                for (s,) in await _rows(
                    src,
                    f"SELECT session_id FROM {qs}.conversations WHERE bucket = ANY(%s)"
                    " ORDER BY bucket, session_id LIMIT %s",
                    (buckets, DELETE_BATCH),
                )
            ]
            if not sids:
                break
            async with src.transaction():
                for t in [*others, "conversations"]:
                    cur = await src.execute(
                        f'DELETE FROM {qs}."{t}" WHERE session_id = ANY(%s) AND bucket = ANY(%s)',
                        (sids, buckets),
                    )
                    moved += cur.rowcount
        for t in tables:  # rows without their conversation (op ids of a deleted one)
            while True:
                cur = await src.execute(m.delete_batch(self.schema, t), (buckets, DELETE_BATCH))
                moved += cur.rowcount
                if cur.rowcount == 0:
                    break
        self.result.rows_moved = moved
        await src.execute(m.set_phase(self.schema), ("done", "done", moved, r.id))
        self.emit("done", rows_copied=moved)


async def _check(router: ShardedRouter, source: str, target: str, buckets: list[int]) -> None:
    """MoveError naming the shard for every prerequisite of a new move that does not hold."""
    schema = router.config.schema
    shards = router.shards
    async with AsyncExitStack() as stack:
        src = await stack.enter_async_context(shards[source].primary_connection())
        dst = await stack.enter_async_context(shards[target].primary_connection())
        for name, conn in ((source, src), (target, dst)):
            if not await _one(conn, m.has_moves_table(schema)):
                raise MoveError(
                    name,
                    "is not migrated to a version that can move buckets "
                    "(migration 0013): run `pgsessions migrate`",
                )
        vs, vt = await _one(src, m.version(schema)), await _one(dst, m.version(schema))
        if vs != vt:
            raise MoveError(
                target,
                f"is at schema version {vt}, shard {source!r} at {vs}: "
                "migrate both to the same version first",
            )
        level, free, sup, repl, bypass, standby = (await _rows(src, m.SOURCE_CHECKS))[0]
        if standby:
            raise MoveError(source, "the connection is not to the primary")
        if level != "logical":
            raise MoveError(
                source,
                f"wal_level is {level!r}: a move needs wal_level = "
                "logical on the source (a restart of its primary)",
            )
        tsup, tstandby, sync_workers = (await _rows(dst, m.TARGET_CHECKS))[0]
        tables = await _rows(src, m.SESSION_TABLES, (schema,))
        need = 1 + min(len(tables), int(sync_workers))
        if free < need:
            raise MoveError(
                source,
                f"{free} free replication slots, a move needs {need} (its "
                "slot and the initial copy's): raise max_replication_slots or drop "
                "unused slots",
            )
        if not (sup or (repl and bypass)):
            raise MoveError(
                source,
                "the role of its DSN may not replicate every row: it needs "
                "SUPERUSER, or REPLICATION and BYPASSRLS",
            )
        if tstandby:
            raise MoveError(target, "the connection is not to the primary")
        if not tsup:
            raise MoveError(
                target,
                "the role of its DSN may not create a subscription (PostgreSQL 15: SUPERUSER)",
            )
        other = await _unfinished(src, schema)
        if other is not None:
            raise MoveError(
                source,
                f"move {other.id} of buckets {ranges(other.buckets)} is in "
                f"progress (phase {other.phase}): resume or abort it first",
            )
        owned = await _rows(dst, m.owned(schema), (buckets,))
        if owned:
            raise MoveError(target, f"already owns buckets {ranges([b for b, _ in owned])}")
        for (t,) in tables:
            if await _one(dst, m.any_rows(schema, t), (buckets,)):
                raise MoveError(
                    target,
                    f"holds rows of buckets {ranges(buckets)} in table "
                    f"{t} while it does not own them: delete them (or abort the "
                    "move that left them) first",
                )


async def _records(router: ShardedRouter) -> list[_Record]:
    out = []
    for name, r in router.shards.items():
        async with r.primary_connection() as conn:
            rec = await _unfinished(conn, router.config.schema)
        if rec is not None:
            if rec.source != name:
                raise MoveError(name, f"records move {rec.id} of shard {rec.source!r}")
            out.append(rec)
    return out


async def resume_moves(
    router: ShardedRouter, *, progress: Progress | None = None, wait: float = 3600.0
) -> list[MoveResult]:
    """Run every unfinished move (recorded on its source) to its end."""
    results = []
    for rec in await _records(router):
        mover = _Mover(router, rec, progress, wait)
        mover.result.resumed = True
        mover.emit("resumed")
        results.append(await mover.run())
    return results


async def move_buckets(
    router: ShardedRouter,
    buckets: Iterable[int],
    *,
    to: str,
    progress: Progress | None = None,
    wait: float = 3600.0,
) -> list[MoveResult]:
    """Move ``buckets`` to shard ``to`` while writes go on; one move per source shard.

    An unfinished move of any of these buckets is resumed first (a mover that died). Each
    prerequisite is checked before anything changes (MoveError naming the shard):
    migration 0013 and the same schema version on both shards, ``wal_level = logical`` and
    free replication slots on the source, roles allowed to replicate and subscribe, the
    target neither owning the buckets nor holding rows of them. ``progress`` is called
    with a :class:`MoveProgress` at each phase (and every second of the initial copy);
    ``wait`` bounds each wait (the copy, each catch-up).
    """
    wanted = sorted(set(buckets))
    if to not in router.shards:
        raise ValueError(
            f"no shard {to!r} in the router's configuration ({', '.join(router.shards)})"
        )
    n = router.buckets
    bad = [b for b in wanted if not 0 <= b < n]
    if bad or not wanted:
        raise ValueError(f"buckets must be in 0-{n - 1}, got {ranges(bad) or 'none'}")
    results: list[MoveResult] = []
    for rec in await _records(router):
        if set(rec.buckets) & set(wanted):
            if rec.target != to:
                raise MoveError(
                    rec.source,
                    f"move {rec.id} of buckets {ranges(rec.buckets)} "
                    f"to {rec.target!r} is in progress: resume or abort it first",
                )
            mover = _Mover(router, rec, progress, wait)
            mover.result.resumed = True
            mover.emit("resumed")
            results.append(await mover.run())
    directory = await router.refresh()
    if directory is None:
        raise MoveError(to, "the sharded set-up is not made yet: run `pgsessions migrate`")
    by_source: dict[str, list[int]] = {}
    for b in wanted:
        owner = directory.owners[b]
        if owner == to:
            continue
        if owner is None:
            raise MoveError(
                to,
                f"bucket {b} is owned by no shard (a move in progress "
                "elsewhere?): `pgsessions shard status`",
            )
        by_source.setdefault(owner, []).append(b)
    for source, mine in sorted(by_source.items()):
        await _check(router, source, to, mine)
        rec = _Record(
            uuid.uuid4().hex[:12],
            source,
            to,
            tuple(mine),
            tuple(directory.epochs[b] for b in mine),
            "copying",
        )
        async with router.shards[source].primary_connection() as conn:
            await conn.execute(
                m.record(router.config.schema),
                (rec.id, rec.source, rec.target, list(rec.buckets), list(rec.epochs)),
            )
        results.append(await _Mover(router, rec, progress, wait).run())
    return results


async def abort_move(router: ShardedRouter, *, progress: Progress | None = None) -> list[str]:
    """Roll back every unfinished move that has not flipped: the subscription and the
    publication are dropped, the target's copied rows deleted, and a fenced source takes
    its buckets back (at epoch + 1). A move that flipped is resumed instead (its target
    owns the buckets). Returns the ids of the moves rolled back."""
    out = []
    schema = router.config.schema
    for rec in await _records(router):
        name = m.move_object(rec.id)
        async with AsyncExitStack() as stack:
            src = await stack.enter_async_context(router.shards[rec.source].primary_connection())
            dst = await stack.enter_async_context(router.shards[rec.target].primary_connection())
            if not await _one(
                src, "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (m.lock_key(schema),)
            ):
                raise MoveError(rec.source, f"another mover is working on move {rec.id}")
            if await _rows(dst, m.owned(schema), (list(rec.buckets),)):
                raise MoveError(
                    rec.target,
                    f"move {rec.id} flipped (the target owns buckets "
                    f"{ranges(rec.buckets)}): it cannot be rolled back; resume it",
                )
            await _drop_subscription(dst, name)
            await src.execute(m.drop_publication(name))
            await src.execute(m.DROP_SLOT, (name,))
            await _delete_copy(dst, schema, rec.buckets)
            async with src.transaction():
                if rec.phase == "fenced":
                    await src.execute(
                        m.take(schema), (list(rec.buckets), [e + 1 for e in rec.epochs])
                    )
                await src.execute(m.set_phase(schema), ("aborted", "aborted", None, rec.id))
            await _one(
                src, "SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (m.lock_key(schema),)
            )
        if progress is not None:
            progress(MoveProgress(rec.id, "aborted", rec.source, rec.target, rec.buckets, 0.0))
        out.append(rec.id)
    await router.refresh()
    return out


async def shard_status(router: ShardedRouter, *, history: int = 10) -> dict[str, Any]:
    """Owner and epoch per bucket range, moves in progress and recent ones, and leftover
    publications, subscriptions and replication slots of moves on every shard."""
    directory = await router.refresh()
    schema = router.config.schema
    out: dict[str, Any] = {"buckets": router.buckets, "ranges": [], "shards": {}}
    if directory is not None:
        start = 0
        for b in range(1, directory.buckets + 1):
            if b == directory.buckets or (directory.owners[b], directory.epochs[b]) != (
                directory.owners[start],
                directory.epochs[start],
            ):
                out["ranges"].append(
                    {
                        "first": start,
                        "last": b - 1,
                        "owner": directory.owners[start],
                        "epoch": directory.epochs[start],
                    }
                )
                start = b
    counts = directory.counts() if directory is not None else {}
    unfinished: set[str] = set()
    for name, r in router.shards.items():
        async with r.primary_connection() as conn:
            info: dict[str, Any] = {"buckets": counts.get(name, 0), "moves": []}
            if await _one(conn, m.has_moves_table(schema)):
                for i, src, dst, bs, phase, rows, started, finished in await _rows(
                    conn, m.moves(schema), (history,)
                ):
                    info["moves"].append(
                        {
                            "id": i,
                            "source": src,
                            "target": dst,
                            "buckets": ranges(bs),
                            "phase": phase,
                            "rows_moved": rows,
                            "started_at": started,
                            "finished_at": finished,
                        }
                    )
                    if phase not in m.FINISHED:
                        unfinished.add(i)
            size = await _rows(conn, m.SIZES, (schema,))
            info["rows_estimate"], info["bytes"] = (int(size[0][0]), int(size[0][1]))
            info["publications"] = [p for (p,) in await _rows(conn, m.LEFTOVER_PUBLICATIONS)]
            info["subscriptions"] = [s for (s,) in await _rows(conn, m.LEFTOVER_SUBSCRIPTIONS)]
            info["slots"] = [
                {"slot": s, "active": a, "retained_bytes": int(w or 0)}
                for s, a, w in await _rows(conn, m.LEFTOVER_SLOTS)
            ]
        out["shards"][name] = info
    out["in_progress"] = sorted(unfinished)
    return out


def leftovers(status: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(shard, kind, name) of every publication, subscription or slot of a move that is not
    in progress (a forgotten slot keeps the source's WAL forever)."""
    live = {m.move_object(i) for i in status["in_progress"]}
    out = []
    for shard, info in status["shards"].items():
        for p in info["publications"]:
            if p not in live:
                out.append((shard, "publication", p))
        for s in info["subscriptions"]:
            if s not in live:
                out.append((shard, "subscription", s))
        for s in info["slots"]:
            if s["slot"] not in live:
                out.append((shard, "slot", s["slot"]))
    return out


async def drop_leftovers(router: ShardedRouter) -> list[tuple[str, str, str]]:
    """Drop the leftovers :func:`leftovers` lists (subscriptions first); returns them."""
    found = leftovers(await shard_status(router))
    order = {"subscription": 0, "publication": 1, "slot": 2}
    for shard, kind, name in sorted(found, key=lambda x: order[x[1]]):
        async with router.shards[shard].primary_connection() as conn:
            if kind == "subscription":
                await conn.execute(m.drop_subscription(name))
            elif kind == "publication":
                await conn.execute(m.drop_publication(name))
            else:
                await conn.execute(m.DROP_SLOT, (name,))
    return found


__all__: Sequence[str] = (
    "MoveError",
    "MoveProgress",
    "MoveResult",
    "abort_move",
    "drop_leftovers",
    "leftovers",
    "move_buckets",
    "parse_buckets",
    "resume_moves",
    "shard_status",
)
