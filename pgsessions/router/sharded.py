"""ShardedRouter: one session store over several replicated clusters (shards).

Each shard is a full :class:`~.session_router.SessionRouter` (failover, replicas,
read-your-writes). A conversation's bucket (:mod:`.placement`) picks its shard through the
directory (:mod:`.directory`), read from the shards themselves. Every write runs the
shard's fence in its own transaction (reads may run the same check without a lock): a shard
that does not own the bucket at the router's epoch refuses (SQLSTATE ``PGS01``), and the
router reads the directory again and retries on the owner (operation ids keep a write's
outcome exactly-once). Tokens name their shard (:mod:`.shard_tokens`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg.abc import Params, Query

from ..errors import (
    MOVED_SQLSTATE,
    BucketMovedError,
    DirectoryError,
    RouterClosedError,
    ShardError,
)
from . import shard_tokens
from .classify import backoff
from .config import RouterConfig
from .counters import RouterObserver
from .directory import Directory, Placement, ShardClaim, build_directory
from .dsn import redact
from .execution import Rows, Setup, Setups
from .loops import LoopThread, running_loop
from .placement import DEFAULT_BUCKETS, spread
from .protocol import KeyLike, RouteKey, Router, route_key
from .session_router import SessionRouter
from .shard_env import parse_shards
from .shard_sql import ShardSql, shard_sql
from .topology import Topology

T = TypeVar("T")
log = logging.getLogger(__name__)

ShardConfig = RouterConfig | str | Sequence[str]
#: how long a refresh waits for a shard before counting it with its last claim
_LENIENT_WAIT = 2.0


def _is_moved(exc: BaseException) -> bool:
    return isinstance(exc, psycopg.Error) and exc.sqlstate == MOVED_SQLSTATE


def _with(first: Setup, setup: Setups | None) -> Setups:
    """``first``, then ``setup`` (one round trip: they share the statement's pipeline)."""
    if setup is None:
        return first
    return [first, *setup] if isinstance(setup, list) else [first, setup]


#: positional parameters (a fence's two can go before them)
_SEQUENCES = (list, tuple)


def _fenced_params(
    at: Placement, params: Params | None, retry_params: Params | None
) -> tuple[tuple[Any, ...], tuple[Any, ...] | None]:
    """A fenced statement's parameters and retry parameters: bucket and epoch first."""
    route = (at.bucket, at.epoch)
    again = None if retry_params is None else (*route, *retry_params)
    return (*route, *(params or ())), again


class ShardedRouter:
    """Routes each conversation to the shard that owns its bucket.

    ``shards`` maps a shard's name (letters, digits, ``_``, ``-``) to its RouterConfig (or
    hosts); every shard uses the same schema. ``buckets`` is the bucket count of the set-up,
    fixed when :func:`pgsessions.migrate` first spreads the buckets. ``directory_interval``:
    how often the directory is read again (default: ``check_interval``). ``check_reads``: every
    read checks ownership on the shard too (one more statement per read); without it
    reads go to the owner the directory names. Use it wherever a
    SessionRouter is accepted: ``async with ShardedRouter(...) as router``, or
    :meth:`start` for sync code.
    """

    def __init__(
        self,
        shards: Mapping[str, ShardConfig],
        *,
        buckets: int = DEFAULT_BUCKETS,
        check_reads: bool = False,
        directory_interval: float | None = None,
    ) -> None:
        if not shards:
            raise ValueError("ShardedRouter needs at least one shard")
        if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < len(shards):
            raise ValueError(
                f"buckets must be an integer >= the number of shards ({len(shards)}), "
                f"got {buckets!r}"
            )
        self.buckets = buckets
        #: reads check ownership too (one more statement in their pipeline); by default a
        #: read goes to the owner the directory names, and writes are fenced
        self.check_reads = check_reads
        if directory_interval is not None and not (
            isinstance(directory_interval, int | float)
            and not isinstance(directory_interval, bool)
            and 0 < directory_interval <= 3600
        ):
            raise ValueError(
                f"directory_interval must be a number of seconds in (0, 3600], "
                f"got {directory_interval!r}"
            )
        self._directory_interval = directory_interval
        configs: dict[str, RouterConfig] = {}
        for name in sorted(shards):
            shard_tokens.check_shard_name(name)
            cfg = shards[name]
            if not isinstance(cfg, RouterConfig):
                cfg = RouterConfig(hosts=cfg if isinstance(cfg, str) else list(cfg))
            if cfg.name == RouterConfig.name:  # the default: name it after the shard
                cfg = dataclasses.replace(cfg, name=name)
            configs[name] = cfg
        _check_configs(configs)
        self._routers: dict[str, SessionRouter] = {n: SessionRouter(c) for n, c in configs.items()}
        self._order = tuple(self._routers.values())
        #: the first shard's settings (schema, session TTL, ...: statements are written for
        #: them, and every shard shares the schema)
        self.config: RouterConfig = self._order[0].config
        self._sql: ShardSql = shard_sql(self.config.schema)
        self._directory: Directory | None = None
        #: what each shard claimed when it last answered
        self._last_claims: dict[str, ShardClaim] = {}
        #: the claims the directory was last built from, and what was built
        self._built: tuple[list[ShardClaim], Directory | None] | None = None
        self._thread: LoopThread | None = None
        #: reads the directory again every check_interval while the router is open
        self._refresher: asyncio.Task[None] | None = None
        self._open = False
        self._pid = os.getpid()
        #: statements sent again to the owner after a shard refused them
        self.redirects = 0

    @classmethod
    def from_env(cls, **overrides: object) -> ShardedRouter:
        """A router over the shards of ``PGSESSIONS_SHARDS`` (``"s1=dsn1,dsn2;s2=dsn3"``,
        see :mod:`.shard_env`) with ``PGSESSIONS_BUCKETS`` buckets (default 1024); every
        other setting as :meth:`RouterConfig.from_env` reads it (``overrides`` too)."""
        text = os.environ.get("PGSESSIONS_SHARDS", "")
        if not text.strip():
            raise ValueError('PGSESSIONS_SHARDS is not set: give "s1=dsn1,dsn2;s2=dsn3,dsn4"')
        raw = os.environ.get("PGSESSIONS_BUCKETS", "").strip()
        try:
            buckets = int(raw) if raw else DEFAULT_BUCKETS
        except ValueError:
            raise ValueError(f"PGSESSIONS_BUCKETS must be an integer, got {raw!r}") from None
        shards = {
            name: RouterConfig.from_env(**{**overrides, "hosts": dsns, "name": name})
            for name, dsns in parse_shards(text).items()
        }
        return cls(shards, buckets=buckets)

    def __repr__(self) -> str:
        counts = self._directory.counts() if self._directory is not None else {}
        shards = ", ".join(f"{n}: {counts.get(n, 0)} buckets" for n in self._routers)
        return f"ShardedRouter({shards}; buckets={self.buckets})"

    @property
    def directory_interval(self) -> float:
        """How often the directory is read again (seconds; the first shard's
        ``check_interval`` unless given)."""
        given = self._directory_interval
        return self.config.check_interval if given is None else float(given)

    @property
    def shards(self) -> Mapping[str, SessionRouter]:
        """The router of each shard, by name."""
        return dict(self._routers)

    @property
    def closed(self) -> bool:
        return not self._open

    @property
    def directory(self) -> Directory | None:
        """The directory as last read (None: the set-up is not made yet: migrate)."""
        return self._directory

    # lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        """Open every shard's router and read the directory from the shards.

        Raises :class:`ShardError` naming the shard that cannot be opened, is the same
        cluster as another, or was set up under another name or bucket count, and
        :class:`DirectoryError` when two shards claim a bucket or none owns one. Nothing
        stays open after a failure. Before the set-up is made (no migration yet) the router
        opens, and statements wait for :func:`pgsessions.migrate`.
        """
        if self._open:
            return
        names = list(self._routers)
        results = await asyncio.gather(*(r.open() for r in self._order), return_exceptions=True)
        failed = [
            (n, e) for n, e in zip(names, results, strict=True) if isinstance(e, BaseException)
        ]
        try:
            if failed:
                name, exc = failed[0]
                raise ShardError(name, f"cannot be opened: {exc}") from exc
            self._directory = await self._read_directory(complete=True)
        except BaseException:
            await asyncio.gather(*(r.close() for r in self._order), return_exceptions=True)
            raise
        self._open = True
        self._refresher = asyncio.get_running_loop().create_task(
            self._keep_directory_fresh(), name="pgsessions-directory"
        )

    async def close(self) -> None:
        """Close every shard's router (promptly, with requests in flight)."""
        self._open = False
        refresher, self._refresher = self._refresher, None
        if refresher is not None and not refresher.done():
            refresher.cancel()
            if refresher.get_loop() is asyncio.get_running_loop():
                await asyncio.gather(refresher, return_exceptions=True)
        await asyncio.gather(*(r.close() for r in self._order), return_exceptions=True)

    async def __aenter__(self) -> ShardedRouter:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @classmethod
    def start(
        cls,
        shards: Mapping[str, ShardConfig],
        *,
        buckets: int = DEFAULT_BUCKETS,
        check_reads: bool = False,
        directory_interval: float | None = None,
        timeout: float | None = None,
    ) -> ShardedRouter:
        """An open router served by an event loop thread of its own, shared by its shards
        (see :meth:`SessionRouter.start`); close it with :meth:`stop`."""
        router = cls(
            shards,
            buckets=buckets,
            check_reads=check_reads,
            directory_interval=directory_interval,
        )
        thread = LoopThread("pgsessions-sharded")
        thread.start()
        router._thread = thread
        for r in router._order:
            r._serve_on(thread)
        try:
            thread.call(router.open(), timeout)
        except BaseException:
            thread.stop(5.0)
            raise
        return router

    def stop(self, timeout: float | None = 10.0) -> None:
        """Close the router from sync code and join its loop thread."""
        thread = self._thread
        if thread is None:
            for r in self._order:
                r.stop(timeout)
            self._open = False
            return
        if running_loop() is thread.loop:
            raise RuntimeError("stop() blocks: on the router's own loop, await close()")
        if thread.alive and self._pid == os.getpid():
            try:
                thread.call(self.close(), timeout)
            except RouterClosedError:
                pass
        self._open = False
        thread.stop(timeout)

    def __enter__(self) -> ShardedRouter:
        if self._thread is None:
            raise TypeError(
                "`with` needs a router made by ShardedRouter.start(shards); "
                "in async code use `async with ShardedRouter(shards)`"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run_sync(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a pgsessions coroutine from sync code (see :meth:`SessionRouter.run_sync`)."""
        if self._thread is None:
            return self._order[0].run_sync(coro, timeout)
        if running_loop() is not None:
            coro.close()
            raise RuntimeError(
                "run_sync() blocks the calling thread: in async code, await the coroutine"
            )
        if not self._open:
            coro.close()
            raise RouterClosedError("the router is not open")
        return self._thread.call(coro, timeout)

    # the directory ---------------------------------------------------------------------
    async def _claim(self, name: str, router: SessionRouter) -> ShardClaim:
        """What shard ``name`` says of itself (read where its reads go)."""
        try:
            rows = await router.execute_read("shard_identity", None, self._sql.identity)
            sysid, db, ready = rows[0]
            if not ready:
                return ShardClaim(name, (str(sysid), str(db)))
            rows = await router.execute_read("shard_directory", None, self._sql.directory)
        except psycopg.Error as exc:
            raise ShardError(name, f"cannot read its directory: {exc}") from exc
        if not rows:
            return ShardClaim(name, (str(sysid), str(db)))
        shard, buckets, owned, epochs = rows[0]
        return ShardClaim(
            name,
            (str(sysid), str(db)),
            name=shard,
            buckets=buckets,
            owned=dict(zip(owned, epochs, strict=True)),
        )

    async def _claim_within(
        self, name: str, router: SessionRouter, seconds: float | None
    ) -> ShardClaim:
        async with asyncio.timeout(seconds):
            return await self._claim(name, router)

    async def _claims(self, *, lenient: bool = False) -> list[ShardClaim]:
        """Every shard's claim; ``lenient``: a shard that cannot answer now keeps the claim
        it made last (a fault in one shard must not fail a redirect to another)."""
        wait = min(_LENIENT_WAIT, self.config.failover_timeout) if lenient else None
        found = await asyncio.gather(
            *(self._claim_within(n, r, wait) for n, r in self._routers.items()),
            return_exceptions=True,
        )
        claims: list[ShardClaim] = []
        for name, got in zip(self._routers, found, strict=True):
            if isinstance(got, ShardClaim):
                self._last_claims[name] = got
                claims.append(got)
            elif lenient and name in self._last_claims and isinstance(got, Exception):
                claims.append(self._last_claims[name])
            else:
                raise got
        return claims

    async def _read_directory(self, *, complete: bool) -> Directory | None:
        claims = await self._claims(lenient=not complete)
        if not complete and self._built is not None and claims == self._built[0]:
            # the periodic re-read mostly finds nothing changed: the directory built from
            # the same claims is the one to keep
            return self._built[1]
        directory = build_directory(claims, self.buckets, complete=False)
        if complete and directory is not None:
            none = {b for b, owner in enumerate(directory.owners) if owner is None}
            # buckets between a move's fence and its flip are owned by none on purpose:
            # calls to them wait for the flip; any other ownerless bucket is an error
            if none and not none <= await self._fenced_in_moves():
                build_directory(claims, self.buckets, complete=True)
        if self._directory is not None and directory is not None:
            await self._see_moved_in(self._directory, directory)
        self._built = (claims, directory)
        return directory

    async def _see_moved_in(self, old: Directory, new: Directory) -> None:
        """Before reads follow ``new``, each shard it gives buckets the router did not see it
        own is checked again: its primary's WAL position, a floor for its reads, then covers
        the rows a move copied in (a session's own writes among them), which a replica of
        that shard behind the flip would miss, while the session's token names the old
        owner. A shard whose primary cannot be reached keeps what its monitor last saw."""
        gained = {o for o, was in zip(new.owners, old.owners, strict=True) if o and o != was}
        if gained:
            now = time.monotonic()
            await asyncio.gather(*(self._routers[n]._monitor.refresh(after=now) for n in gained))

    async def _fenced_in_moves(self) -> set[int]:
        """The buckets some shard fenced in a move that has not flipped yet (none when the
        shards have no record of moves, or it cannot be read)."""
        out: set[int] = set()
        for router in self._order:
            try:
                rows = await router.execute_read("shard_moves", None, self._sql.fenced_moves)
            except psycopg.Error:
                continue
            out.update(rows[0][0] if rows else ())
        return out

    async def refresh(self) -> Directory | None:
        """Read the directory from the shards again (after a refusal, or a move); a shard
        that cannot answer now counts with what it claimed last."""
        self._require_open()
        self._directory = await self._read_directory(complete=False)
        return self._directory

    async def _keep_directory_fresh(self) -> None:
        """Read the directory every directory_interval, so that reads (which follow it) reach a
        bucket's new owner within one check after a move even without a refusal."""
        while self._open:
            await asyncio.sleep(self.directory_interval)
            if not self._open or self._pid != os.getpid():
                return
            try:
                await self.refresh()
            except (psycopg.Error, ShardError, DirectoryError, OSError, TimeoutError) as exc:
                # the last directory stays; writes are fenced, and the next check retries
                log.debug("directory refresh failed: %s", exc)
            except RouterClosedError:
                return

    async def after_migrate(self) -> None:
        """On a fresh set-up (no shard set up yet) spread the buckets evenly over the
        shards at epoch 1, each shard under its migrate lock; then read the directory."""
        claims = await self._claims()
        if all(c.name is None for c in claims):
            plan = spread(list(self._routers), self.buckets)
            for name, router in self._routers.items():
                mine = [b for b, owner in plan.items() if owner == name]
                async with router.primary_connection() as conn, conn.transaction():
                    # the key of sessions.schema's migrate lock: one set-up at a time
                    await conn.execute(
                        self._sql.lock, (f"pgsessions.migrate:{self.config.schema}",)
                    )
                    await conn.execute(self._sql.claim_identity, (name, self.buckets))
                    await conn.execute(self._sql.claim_buckets, (mine,))
        self._directory = await self._read_directory(complete=True)

    def _place(self, session_id: str) -> Placement:
        directory = self._directory
        if directory is None:
            raise DirectoryError(
                "the sharded set-up is not made yet: run `pgsessions migrate` (or "
                "`await pgsessions.migrate(router)`) once",
                [],
            )
        return directory.place(session_id)

    async def _placed(self, session_id: str, deadline: float) -> Placement:
        """Where ``session_id`` lives, reading the directory again while no shard owns its
        bucket (a move in flight) until ``deadline``."""
        attempt = 0
        while True:
            try:
                return self._place(session_id)
            except DirectoryError:
                attempt += 1
                if time.monotonic() >= deadline or (self._directory is None and attempt > 1):
                    raise
                await asyncio.sleep(backoff(attempt))
                await self.refresh()

    async def _routed(
        self,
        operation: str,
        key: RouteKey,
        call: Callable[[SessionRouter, Placement, bool], Coroutine[Any, Any, T]],
        *,
        refused: bool = False,
    ) -> tuple[T, Placement]:
        """``call(owner, placement, again)`` on the owner of ``key``'s bucket; after a refusal
        the directory is read again and the call goes to the owner, until failover_timeout.

        The first attempt, when the directory places the key, runs without the loop (most
        calls end there); the loop starts after a refusal or without a placement.
        ``refused``: the caller made the first attempt and it was refused (counted, and the
        directory read again): only the loop runs."""
        self._require_open()
        seen = self._directory
        first = None
        if seen is not None and not refused:
            try:
                first = seen.place(key.session_id)
            except DirectoryError:
                first = None
        again = refused
        attempt = 1 if refused else 0
        if first is not None:
            try:
                return await call(self._routers[first.shard], first, False), first
            except psycopg.Error as exc:
                if not _is_moved(exc):
                    raise
            attempt = 1
            self._redirected(operation, first.shard)
            again = True
            if self._directory is seen:
                await self.refresh()
        deadline = time.monotonic() + self.config.failover_timeout
        while True:
            seen = self._directory
            place = await self._placed(key.session_id, deadline)
            try:
                return await call(self._routers[place.shard], place, again), place
            except psycopg.Error as exc:
                if not _is_moved(exc):
                    raise
                attempt += 1
                self._redirected(operation, place.shard)
                if time.monotonic() >= deadline:
                    raise BucketMovedError(
                        f"shard {place.shard!r} refused bucket {place.bucket} at epoch "
                        f"{place.epoch} and no owner took it within "
                        f"failover_timeout={self.config.failover_timeout}s",
                        place.shard,
                        place.bucket,
                    ) from exc
                if self._directory is seen:  # nobody read it since: read it now
                    if attempt > 1:
                        await asyncio.sleep(backoff(attempt - 1))
                    await self.refresh()
                again = True

    def _redirected(self, operation: str, shard: str) -> None:
        """Count a refusal (PGS01) by ``shard``: ``redirects``, and the shard's observers that
        have an ``on_redirect(operation)`` hook (the metrics' pgsessions_redirects_total)."""
        self.redirects += 1
        self._routers[shard]._counters.emit("on_redirect", operation)

    # statements ------------------------------------------------------------------------
    async def execute_write(
        self,
        operation: str,
        key: KeyLike,
        query: Query,
        params: Params | None = None,
        *,
        commits: bool = False,
        setup: Setups | None = None,
        retry_params: Params | None = None,
        batch_query: Query | None = None,
        fenced_query: Query | None = None,
    ) -> tuple[Rows, str]:
        """Run one idempotent write on the primary of the shard owning ``key``'s bucket,
        fenced in its own transaction (see :meth:`SessionRouter.execute_write`); returns
        its rows and a token naming the shard (``'s1:0/4000028'``).

        With ``fenced_query`` (and positional ``params``) the fence is part of the statement
        (bucket and epoch as its first two parameters); otherwise it runs first, as one
        more statement of the write's pipeline. ``batch_query`` (an unfenced non-committing
        form) is not used: a committing write on a shard is not coalesced with others, so
        that nothing unfenced is ever sent.

        Raises :class:`BucketMovedError` when no shard took the bucket within
        ``failover_timeout``, :class:`DirectoryError` when no shard reached owns it.
        """
        k = key if isinstance(key, RouteKey) else route_key(key)
        if k is None:
            raise TypeError(
                "a ShardedRouter writes one conversation at a time: give a route key, or "
                "run the statement on each of router.clusters()"
            )

        inline = (
            fenced_query is not None
            and (params is None or isinstance(params, _SEQUENCES))
            and (retry_params is None or isinstance(retry_params, _SEQUENCES))
        )
        directory = self._directory
        if inline and self._open and directory is not None:
            # the common case: the first attempt on the owner the directory names, the fence
            # in the statement (a refusal, no owner or a fence of its own: the loop below)
            try:
                at = directory.place(k.session_id)
            except DirectoryError:
                pass
            else:
                first, again = _fenced_params(at, params, retry_params)
                try:
                    rows, token = await self._routers[at.shard].execute_write(
                        operation,
                        k,
                        fenced_query,  # type: ignore[arg-type]
                        first,
                        commits=commits,
                        setup=setup,
                        retry_params=again,
                    )
                    return rows, f"{at.shard}:{token}"
                except psycopg.Error as exc:
                    if not _is_moved(exc):
                        raise
                self._redirected(operation, at.shard)
                if self._directory is directory:
                    await self.refresh()
                return await self._write_routed(
                    operation, k, query, params, commits, setup, retry_params, fenced_query, True
                )
        return await self._write_routed(
            operation,
            k,
            query,
            params,
            commits,
            setup,
            retry_params,
            fenced_query if inline else None,
            False,
        )

    async def _write_routed(
        self,
        operation: str,
        k: RouteKey,
        query: Query,
        params: Params | None,
        commits: bool,
        setup: Setups | None,
        retry_params: Params | None,
        fenced_query: Query | None,
        refused: bool,
    ) -> tuple[Rows, str]:
        """:meth:`execute_write` through :meth:`_routed` (``fenced_query``: None unless the
        fence goes in the statement; ``refused``: the first attempt was refused, and the
        directory read again)."""

        async def call(owner: SessionRouter, at: Placement, again: bool) -> tuple[Rows, str]:
            first = retry_params if again and retry_params is not None else params
            if fenced_query is not None:
                fenced, fenced_retry = _fenced_params(at, first, retry_params)
                return await owner.execute_write(
                    operation,
                    k,
                    fenced_query,
                    fenced,
                    commits=commits,
                    setup=setup,
                    retry_params=fenced_retry,
                )
            fence: Setup = (self._sql.fence, (at.bucket, at.epoch))
            return await owner.execute_write(
                operation,
                k,
                query,
                first,
                commits=commits,
                setup=_with(fence, setup),
                retry_params=retry_params,
            )

        (rows, token), place = await self._routed(operation, k, call, refused=refused)
        return rows, f"{place.shard}:{token}"

    def execute_read(
        self,
        operation: str,
        key: KeyLike,
        query: Query,
        params: Params | None = None,
        *,
        token: str | None = None,
        setup: Setups | None = None,
        replay_column: bool = False,
    ) -> Coroutine[Any, Any, Rows]:
        """Run one read on the shard the directory names for ``key``'s bucket (see
        :meth:`SessionRouter.execute_read`), which with ``check_reads`` checks that it owns
        it; only ``token``'s part for that shard counts.
        A statement of no one conversation (``key`` None) runs on the first shard.

        A coroutine like SessionRouter's: the common case hands back the owner's own (no
        coroutine of this router's in between, which costs a frame per read)."""
        k = key if isinstance(key, RouteKey) else route_key(key)
        if k is None:
            return self._order[0].execute_read(
                operation, None, query, params, setup=setup, replay_column=replay_column
            )
        directory = self._directory
        if not self.check_reads and self._open and directory is not None:
            # an unchecked read is never refused: it goes straight to the owner the directory
            # names (a bucket owned by none, a move in flight, takes the loop below)
            try:
                at = directory.place(k.session_id)
                part = shard_tokens.part_for(token, at.shard)
            except (DirectoryError, ValueError):
                pass  # the loop below raises them, as a coroutine should
            else:
                return self._routers[at.shard].execute_read(
                    operation,
                    k,
                    query,
                    params,
                    token=part,
                    setup=setup,
                    replay_column=replay_column,
                )
        return self._read_routed(operation, k, query, params, token, setup, replay_column)

    async def _read_routed(
        self,
        operation: str,
        k: RouteKey,
        query: Query,
        params: Params | None,
        token: str | None,
        setup: Setups | None,
        replay_column: bool,
    ) -> Rows:
        async def call(owner: SessionRouter, at: Placement, again: bool) -> Rows:
            check: Setup = (self._sql.owns, (at.bucket, at.epoch))
            return await owner.execute_read(
                operation,
                k,
                query,
                params,
                token=shard_tokens.part_for(token, at.shard),
                setup=_with(check, setup) if self.check_reads else setup,
                replay_column=replay_column,
            )

        rows, _ = await self._routed(operation, k, call)
        return rows

    @asynccontextmanager
    async def primary_connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """Not for a router over several clusters: use ``cluster_for(key)`` or
        ``clusters()``. With one shard, that shard's primary connection."""
        if len(self._order) != 1:
            raise TypeError(
                "a ShardedRouter reaches several clusters: take primary_connection() of "
                "router.cluster_for(key), or of each of router.clusters()"
            )
        async with self._order[0].primary_connection() as conn:
            yield conn

    # tokens ----------------------------------------------------------------------------
    def _owner(self, key: RouteKey) -> str | None:
        try:
            return self._place(key.session_id).shard
        except DirectoryError:
            return None

    def token_for(self, key: KeyLike) -> str | None:
        k = route_key(key)
        owner = self._owner(k) if k is not None else None
        if k is None or owner is None:
            return None
        lsn = self._routers[owner].token_for(k)
        return None if lsn is None else f"{owner}:{lsn}"

    def remember_token(self, key: KeyLike, token: str | None) -> None:
        """Keep ``token``'s part for the shard that owns ``key`` (a part of another shard
        is ignored); ValueError naming ``token`` unless it is a sharded token."""
        if token is None:
            return
        parts = shard_tokens.parse(token)
        k = route_key(key)
        owner = self._owner(k) if k is not None else None
        if k is not None and owner is not None and owner in parts:
            self._routers[owner].remember_token(k, shard_tokens.part_for(token, owner))

    def forget_token(self, key: KeyLike) -> None:
        for r in self._order:
            r.forget_token(key)

    def newest_token(self, *tokens: str | None) -> str | None:
        """The newest position of each shard among ``tokens``, as one token."""
        if len(tokens) == 2:
            return shard_tokens.newer(*tokens, self._routers)
        return shard_tokens.merge(tokens)

    # clusters and observation ----------------------------------------------------------
    def clusters(self) -> Sequence[SessionRouter]:
        """Each shard's router, in the order of the shards' names."""
        return self._order

    def owned_by(self, cluster: Router) -> list[int] | None:
        """The buckets the directory gives ``cluster`` (one of :meth:`clusters`), for
        statements over a shard's conversations that must skip the rows a move left behind
        on its old owner; None before the set-up is made."""
        directory = self._directory
        if directory is None:
            return None
        name = next((n for n, r in self._routers.items() if r is cluster), None)
        if name is None:
            raise ValueError(f"{cluster!r} is not a shard of this router")
        return [b for b, owner in enumerate(directory.owners) if owner == name]

    def cluster_for(self, key: KeyLike) -> SessionRouter:
        """The router of the shard owning ``key``'s bucket (DirectoryError: none)."""
        k = route_key(key)
        if k is None:
            raise TypeError("cluster_for() needs a route key or a session id")
        return self._routers[self._place(k.session_id).shard]

    def admin_fence(self, key: KeyLike) -> tuple[SessionRouter, Setup]:
        """The owner of ``key``'s bucket and the fence a write of one's own there (an
        import, a prune) runs first in its transaction: ``(sql, (bucket, epoch))``."""
        k = route_key(key)
        if k is None:
            raise TypeError("admin_fence() needs a route key or a session id")
        at = self._place(k.session_id)
        return self._routers[at.shard], (self._sql.fence, (at.bucket, at.epoch))

    def topology(self) -> Topology:
        """Every shard's hosts in one snapshot; ``primary`` lists each shard's primary
        (comma-separated), None unless every shard has one."""
        parts = [r.topology() for r in self._order]
        primaries = [t.primary for t in parts]
        return Topology(
            hosts=tuple(h for t in parts for h in t.hosts),
            primary=",".join(p for p in primaries if p) if all(primaries) else None,
            primary_lsn=None,
            checked_at=min(t.checked_at for t in parts),
            split_brain=tuple(h for t in parts for h in t.split_brain),
        )

    def stats(self) -> dict[str, Any]:
        """``{"shards": {name: that shard's stats()}, "redirects": n, "buckets": {name: n}}``."""
        counts = self._directory.counts() if self._directory is not None else {}
        return {
            "shards": {n: r.stats() for n, r in self._routers.items()},
            "redirects": self.redirects,
            "buckets": {n: counts.get(n, 0) for n in self._routers},
        }

    def pool_stats(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for r in self._order:
            out.update(r.pool_stats())
        return out

    def add_observer(self, observer: RouterObserver) -> None:
        for r in self._order:
            r.add_observer(observer)

    def remove_observer(self, observer: RouterObserver) -> None:
        for r in self._order:
            r.remove_observer(observer)

    def _require_open(self) -> None:
        if not self._open:
            raise RouterClosedError("the router is not open: use `async with ShardedRouter(...)`")


def _check_configs(configs: Mapping[str, RouterConfig]) -> None:
    """ValueError naming the shard for configurations that cannot be one set-up."""
    schemas = {c.schema for c in configs.values()}
    if len(schemas) != 1:
        raise ValueError(
            "every shard must use the same schema, got "
            + ", ".join(f"{n}: {c.schema!r}" for n, c in configs.items())
        )
    seen: dict[str, str] = {}
    for name, cfg in configs.items():
        for host in cfg.host_list:
            label = redact(host)
            other = seen.setdefault(label, name)
            if other != name:
                raise ValueError(
                    f"shard {name!r}: host {label} is also a host of shard {other!r}: each "
                    "shard must be a cluster of its own"
                )


if TYPE_CHECKING:

    def _is_a_router(r: ShardedRouter) -> Router:
        return r  # mypy: ShardedRouter implements the Router protocol
