"""SessionRouter: the face of the router; each job it delegates lives in its own module.

- :mod:`.protocol`: the Router protocol it implements (what sessions use of a router);
- :mod:`.loops`: which event loop runs a call (the owner loop, a loop thread), and fork;
- :mod:`.hosts`: the host table (one record per server);
- :mod:`.monitor`: the monitor loop (checks, primary discovery, topology);
- :mod:`.probe`, :mod:`.health`: one probe of one host; lag, replica health, who is
  the primary (pure);
- :mod:`.tokens`: consistency tokens per conversation, validation and caps;
- :mod:`.planner`: which host serves a read (pure);
- :mod:`.execution`: one statement attempt on one connection;
- :mod:`.classify`: which failures are retried, and the backoff;
- :mod:`.counters`: the counters behind ``stats()`` and the observers (metrics).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import psycopg
from psycopg.abc import Params, Query
from psycopg.pq import TransactionStatus
from tenacity import RetryCallState

from ..errors import (
    NoEligibleReplicaError,
    NoPrimaryError,
    OverloadedError,
    RouterClosedError,
    SplitBrainError,
)
from . import execution
from .classify import (
    backoff,
    classify,
    is_connection_loss,
    is_overload,
    short_error,
    write_retrying,
)
from .coalesce import Coalescer, Pending
from .config import RouterConfig
from .counters import Counters, RouterObserver
from .execution import Rows, Setups
from .hosts import Host, host_table
from .loops import LoopThread, on_fork_in_child, running_loop
from .lsn import parse_lsn
from .monitor import Monitor
from .planner import ReadPlan, plan_read, required_position
from .pools import watchdog
from .privileges import require_pg_monitor
from .protocol import KeyLike, Router, route_key
from .readgroups import Group, Member, ReadGroups, check_lsn, served
from .tokens import TokenStore, newest
from .topology import Topology

T = TypeVar("T")

#: longest wait of one wait_replay statement (see execution.ReplayWait); replay is most often
#: there within a few ms, and a wait past it is sent again
_REPLAY_WAIT_SLICE = 0.01
#: seconds a read alone on a replica looks for its position without sleeping (pg_sleep's
#: 1 ms would be most of its wait there: replay is most often sub-millisecond when idle)
_QUIET_SPIN = 0.002


class _Floor:
    """The admin floor every read needs (raised by migrations), shared with a served twin."""

    __slots__ = ("lsn",)

    def __init__(self) -> None:
        self.lsn = 0


class _NoPrimaryYet(Exception):
    """No writable host right now (retried until failover_timeout)."""


class _NotCaughtUp(Exception):
    """The replica did not reach the token within catch_up_wait."""


class SessionRouter:
    """Sends writes to the primary's pool and history reads to caught-up replicas.

    Use as ``async with SessionRouter(config) as router:``. Statements come from sessions/
    through :meth:`execute_write` and :meth:`execute_read`; the router knows hosts and roles,
    never the schema.
    """

    #: which host serves a read (pure); the drills' broken router wraps it from outside
    _plan_read = staticmethod(plan_read)

    def __init__(
        self,
        config: RouterConfig | str | Sequence[str],
        *,
        _parent: SessionRouter | None = None,
    ) -> None:
        if not isinstance(config, RouterConfig):
            config = RouterConfig(hosts=list(config) if not isinstance(config, str) else config)
        self.config = config
        self._hosts: dict[str, Host] = host_table(config)
        self._host_list = tuple(self._hosts.values())
        # a served twin (see _served) shares what makes reads consistent and what is counted
        self._counters: Counters = _parent._counters if _parent is not None else Counters()
        self._monitor = Monitor(config, self._hosts, self._counters)
        self._tokens: TokenStore = (
            _parent._tokens if _parent is not None else TokenStore(config.token_cache_size)
        )
        #: every read needs at least this position (raised by admin work, e.g. migrations)
        self._floor: _Floor = _parent._floor if _parent is not None else _Floor()
        self._open = False
        #: why calls are refused once closed (a stop, a fork, ...)
        self._closed_why: str | None = None
        #: the loop that opened the router: its pools, locks and tasks belong to it
        self._loop: asyncio.AbstractEventLoop | None = None
        #: set when the router runs on a loop thread of its own (start(), or a served twin)
        self._thread: LoopThread | None = None
        #: whether close() stops ``_thread`` (not when a sharded router shares it)
        self._owns_thread = True
        #: serves calls made on other loops than the owner's (opened at the first one)
        self._twin: SessionRouter | None = None
        self._twin_ready: concurrent.futures.Future[None] | None = None
        self._twin_lock = threading.Lock()
        self._pid = os.getpid()
        self._fork_note: str | None = None
        #: writes waiting at the same moment share a transaction (None: coalescing off)
        self._coalescer: Coalescer[tuple[Rows, str]] | None = (
            Coalescer(self._run_batch, self._withdrawn) if config.coalesce_writes else None
        )
        #: replica reads starting at the same moment share a round trip (None: off)
        self._read_groups: ReadGroups | None = (
            ReadGroups(self._start_read_group, note=self._read_alone)
            if config.coalesce_reads
            else None
        )
        self._group_tasks: set[asyncio.Task[None]] = set()
        #: replica reads wait for their position on the server (migration 0015) where the
        #: monitor found the schema has it (Host.replay_wait); elsewhere they poll from here.
        #: None: catch_up_wait 0, no wait at all
        self._replay_wait: execution.ReplayWait | None = None
        self._replay_wait_quiet: execution.ReplayWait | None = None
        if config.catch_up_wait > 0:
            self._replay_wait = execution.ReplayWait(
                execution.replay_wait_sql(config.schema),
                min(_REPLAY_WAIT_SLICE, config.catch_up_wait),
            )
            # alone on the replica: look without sleeping for a moment first
            self._replay_wait_quiet = self._replay_wait._replace(spin=_QUIET_SPIN)
        on_fork_in_child(self)

    def __repr__(self) -> str:
        return f"SessionRouter(name={self.config.name!r}, primary={self._monitor.primary!r})"

    # lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        """Check every host once (roles, lag), open the pools and start the monitor.

        The loop that runs ``open()`` becomes the router's owner: its calls take the direct
        path. Calls awaited on any other loop, in any thread, are served by a loop thread of
        the router's own (see :meth:`start`). Raises :class:`NoPrimaryError` when no host
        answers at all; a cluster without a primary opens (reads work, writes wait for one).
        Raises :class:`MissingPrivilegeError` when the role of a host cannot see replication
        status (needs ``pg_monitor``; not checked with one host or
        ``read_from_replicas=False``). A cancelled or failed ``open()`` leaves no pool,
        connection or task behind.
        """
        if self._open:
            return
        self._check_process()
        if self._fork_note is not None:
            raise RouterClosedError(self._fork_note)
        self._closed_why = None
        self._loop = asyncio.get_running_loop()
        self._monitor.prepare()
        try:
            await self._monitor.refresh()
            if not any(h.up for h in self._host_list):
                raise NoPrimaryError("no host answered", self._monitor.host_states())
            await require_pg_monitor(self.config, self._host_list)
        except BaseException:
            await asyncio.shield(self._monitor.stop())
            raise
        self._open = True
        self._monitor.start(on_loop_end=self._owner_loop_ended)

    def _owner_loop_ended(self) -> None:
        """The owner loop is shutting down (e.g. ``asyncio.run()`` ends) with the router
        open: its pools are closed with it; calls from other loops go on (served twin)."""
        self._loop = None

    async def close(self) -> None:
        """Stop the monitor and close every pool; returns promptly with requests in flight.

        Requests still running finish on their connection; new ones raise
        :class:`RouterClosedError`. May be awaited on any loop.
        """
        self._open = False
        self._closed_why = self._closed_why or "the router was closed"
        if self._pid != os.getpid():
            return  # a forked child: the pools are the parent's, never touched here
        twin, self._twin = self._twin, None
        if twin is not None:
            await twin.close()
        here = running_loop()
        thread = self._thread
        if thread is not None and not thread.in_thread():
            if thread.alive:
                try:
                    await thread.run(self._monitor.stop())
                except RouterClosedError:
                    pass
            if self._owns_thread:
                await asyncio.to_thread(thread.stop, 5.0)
        elif here is self._loop or self._loop is None:
            await self._monitor.stop()
            if thread is not None and self._owns_thread:
                thread.stop()
        else:
            await self._stop_on_owner_loop(self._loop)

    async def _stop_on_owner_loop(self, owner: asyncio.AbstractEventLoop) -> None:
        """close() awaited on another loop than the owner's: stop the monitor there if that
        loop still runs (waiting at most 2 s: it may be blocked by its own thread)."""
        self._monitor.stopping = True
        if owner.is_closed() or not owner.is_running():
            return
        try:
            fut = asyncio.run_coroutine_threadsafe(self._monitor.stop(), owner)
        except RuntimeError:
            return
        done, _ = await asyncio.wait([asyncio.wrap_future(fut)], timeout=2.0)
        if not done:
            fut.cancel()

    async def __aenter__(self) -> SessionRouter:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # sync applications ------------------------------------------------------------------
    @classmethod
    def start(
        cls, config: RouterConfig | str | Sequence[str], *, timeout: float | None = None
    ) -> SessionRouter:
        """An open router served by an event loop thread of its own (named, daemon).

        For sync code (Flask, Django, Celery, scripts): sessions of this router work from
        any thread, with or without an event loop (``Runner.run_sync`` included). Close it
        with :meth:`stop`, or use ``with SessionRouter.start(config) as router:``. Raises
        what :meth:`open` raises (and the thread is gone).
        """
        router = cls(config)
        thread = LoopThread(f"pgsessions-{router.config.name}")
        thread.start()
        router._thread = thread
        try:
            thread.call(router.open(), timeout)
        except BaseException:
            thread.stop(5.0)
            raise
        return router

    def _serve_on(self, thread: LoopThread) -> None:
        """Run on ``thread``, which another router owns (a ShardedRouter made by start()):
        calls from other loops go there, and close() leaves it running."""
        self._thread = thread
        self._owns_thread = False

    def stop(self, timeout: float | None = 10.0) -> None:
        """Close the router from sync code and join its loop thread (see :meth:`start`).

        Calls in flight finish or raise :class:`RouterClosedError`; later calls raise it.
        """
        if running_loop() is not None and running_loop() is self._loop:
            raise RuntimeError("stop() blocks: on the router's own loop, await close()")
        thread = self._thread
        if thread is None:
            twin = self._twin
            self._open = False
            self._closed_why = self._closed_why or "the router was stopped"
            self._twin = None
            if twin is not None:
                twin.stop(timeout)
            if self._loop is not None and self._pid == os.getpid():
                owner = self._loop
                self._monitor.stopping = True
                if owner.is_running() and not owner.is_closed():
                    fut = asyncio.run_coroutine_threadsafe(self._monitor.stop(), owner)
                    try:
                        fut.result(min(timeout or 2.0, 2.0))
                    except (concurrent.futures.TimeoutError, RuntimeError):
                        fut.cancel()
            return
        if thread.alive and self._pid == os.getpid():
            try:
                thread.call(self.close(), timeout)
            except (RouterClosedError, concurrent.futures.TimeoutError):
                pass
        self._open = False
        self._closed_why = self._closed_why or "the router was stopped"
        thread.stop(timeout)

    def __enter__(self) -> SessionRouter:
        if self._thread is None:
            raise TypeError(
                "`with` needs a router made by SessionRouter.start(config); "
                "in async code use `async with SessionRouter(config)`"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run_sync(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a pgsessions coroutine (``migrate(router)``, ``session.get_items()``, a
        report) from sync code and return its result. Not from async code: await it there.
        """
        if running_loop() is not None:
            coro.close()
            raise RuntimeError(
                "run_sync() blocks the calling thread: in async code, await the coroutine"
            )
        try:
            self._require_open()
        except BaseException:
            coro.close()
            raise
        thread = self._thread or self._served_sync()._thread
        assert thread is not None
        return thread.call(coro, timeout)

    @property
    def thread(self) -> threading.Thread | None:
        """The loop thread serving this router (started by :meth:`start`), or None."""
        return self._thread.thread if self._thread is not None else None

    # other loops -------------------------------------------------------------------------
    async def _away(self, call: Callable[[SessionRouter], Coroutine[Any, Any, T]]) -> T:
        """Run ``call(router)`` where this router serves a caller on another loop than its
        owner's: on its own loop thread, or on its served twin's."""
        self._require_open()
        target = self if self._thread is not None else await self._served()
        assert target._thread is not None
        return await target._thread.run(call(target))

    def _make_twin(self) -> SessionRouter:
        with self._twin_lock:
            twin = self._twin
            if twin is None:
                self._require_open()
                twin = SessionRouter(self.config, _parent=self)
                thread = LoopThread(f"pgsessions-{self.config.name}-served")
                thread.start()
                twin._thread = thread
                self._twin = twin
                self._twin_ready = thread.submit(twin.open())
            return twin

    def _twin_failed(self, twin: SessionRouter) -> None:
        with self._twin_lock:
            if self._twin is twin:
                self._twin = None
        if twin._thread is not None:
            twin._thread.stop(5.0)

    async def _served(self) -> SessionRouter:
        """The twin serving calls from other loops: the same hosts, pools of its own on a
        loop thread, this router's tokens, floor and counters (opened at first use)."""
        twin = self._twin
        if twin is not None and twin._open:
            return twin
        twin = self._make_twin()
        ready = self._twin_ready
        assert ready is not None
        try:
            await asyncio.shield(asyncio.wrap_future(ready))
        except asyncio.CancelledError:
            raise
        except BaseException:
            self._twin_failed(twin)
            raise
        return twin

    def _served_sync(self) -> SessionRouter:
        twin = self._make_twin()
        ready = self._twin_ready
        assert ready is not None
        try:
            ready.result()
        except BaseException:
            self._twin_failed(twin)
            raise
        return twin

    # fork --------------------------------------------------------------------------------
    def _check_process(self) -> None:
        if self._pid != os.getpid():
            self._forked()

    def _forked(self) -> None:
        """In a forked child: refuse every call (the connections are the parent's)."""
        self._fork_note = self._closed_why = (
            f"this router was made in process {self._pid}, which then forked: its "
            "connections belong to that process and are never used here. Open a router "
            "in the child after the fork (gunicorn: post_fork or the worker's app start; "
            "uWSGI: lazy-apps; multiprocessing: in the child's target)"
        )
        self._open = False
        self._twin = None
        self._thread = None

    @property
    def closed(self) -> bool:
        return not self._open

    # observation ------------------------------------------------------------------------
    def topology(self) -> Topology:
        """The monitor's latest snapshot (no I/O): of the part of the router that serves
        the caller (its served twin on another loop, or once the owner loop has ended)."""
        twin = self._twin
        if twin is not None and twin._open:
            here = running_loop()
            if self._loop is None or (here is not None and here is not self._loop):
                return twin._monitor.topology
        return self._monitor.topology

    def add_observer(self, observer: RouterObserver) -> None:
        self._counters.observers.append(observer)

    def remove_observer(self, observer: RouterObserver) -> None:
        if observer in self._counters.observers:
            self._counters.observers.remove(observer)

    def stats(self) -> dict[str, Any]:
        """Plain counters of what this router did (for tests, status and monitoring).

        ``reads`` is ``{role: {reason: n}}``; ``retries`` is ``{"read"|"write": {reason: n}}``;
        ``bans`` counts hosts taken out of use after a failed request until a check;
        ``writes_queued`` the writes waiting for a batch right now (see coalesce_writes);
        ``read_groups`` the groups of replica reads sent in one round trip and
        ``reads_grouped`` the reads they answered (see coalesce_reads).
        """
        out = self._counters.stats(self._host_list)
        out["writes_queued"] = len(self._coalescer.queue) if self._coalescer is not None else 0
        out["read_groups"] = self._counters.counts[("read_group",)]
        out["reads_grouped"] = self._counters.counts[("read_grouped",)]
        return out

    def pool_stats(self) -> dict[str, dict[str, int]]:
        """``host:port`` -> psycopg_pool ``get_stats()`` for each host with an open pool."""
        return {h.label: h.pool.stats() for h in self._host_list if h.pool is not None}

    # consistency tokens ----------------------------------------------------------------
    def token_for(self, key: KeyLike) -> str | None:
        """The newest token this router holds for ``key`` (a RouteKey or a session id)."""
        k = route_key(key)
        return None if k is None else self._tokens.get(k)

    def remember_token(self, key: KeyLike, token: str | None) -> None:
        """Keep ``token`` for ``key`` if it is newer than what is known (bounded LRU).

        Raises ValueError naming ``token`` unless it is a PostgreSQL LSN (``'0/4000028'``).
        """
        k = route_key(key)
        if token is not None and k is not None:
            self._tokens.remember(k, parse_lsn(token))

    def forget_token(self, key: KeyLike) -> None:
        k = route_key(key)
        if k is not None:
            self._tokens.forget(k)

    def newest_token(self, *tokens: str | None) -> str | None:
        """The newest of ``tokens`` (None when all are None); ValueError naming a non-token."""
        return newest(tokens)

    def clusters(self) -> Sequence[SessionRouter]:
        """The clusters this router reaches: one, itself."""
        return (self,)

    def cluster_for(self, key: KeyLike) -> SessionRouter:
        """The router of the cluster holding ``key``: this one."""
        return self

    # failures --------------------------------------------------------------------------
    def _require_open(self) -> None:
        if not self._open:
            raise RouterClosedError(
                self._closed_why or "the router is not open: use `async with SessionRouter(...)`"
            )

    def _failed(self, h: Host, exc: BaseException) -> None:
        """A request on ``h`` failed with a retryable error that is not overload."""
        if is_connection_loss(exc):
            self._counters.add("connection_lost")
            self._counters.emit("on_connection_lost", h.label, h.role)
            # its other idle connections most likely died with this one
            self._monitor.recheck_pool(h)
        self._monitor.mark_suspect(h)

    def _busy(self, operation: str, h: Host, exc: BaseException) -> bool:
        """Whether ``exc`` is overload of a host the monitor sees healthy: then it is counted
        (never a ban) and the caller moves on or raises :meth:`_overloaded`."""
        if not (is_overload(exc) and h.up and not h.suspect_at):
            return False
        self._counters.add("overloaded")
        self._counters.emit("on_overload", operation, h.label, h.role)
        return True

    def _overloaded(self, h: Host, exc: BaseException) -> NoReturn:
        raise OverloadedError(_overload_text(exc, self.config), h.label) from exc

    def _on_pool_wait(self, h: Host) -> Any:
        if not self._counters.observers:
            return None  # nobody to tell: the checkout skips the timing
        return lambda seconds: self._counters.emit("on_pool_wait", h.label, h.role, seconds)

    def _deadline_for_statement(self) -> float:
        # a little past the server's statement_timeout, whose own error should come first
        st = self.config.statement_timeout
        return st + min(1.0, max(0.2, 0.1 * st))

    # writes ----------------------------------------------------------------------------
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
        """Run one idempotent statement on the primary, then take the consistency token.

        The statement runs in its own transaction (at least a local WAL flush at commit) and
        ``pg_current_wal_flush_lsn()`` is read after the commit, all in one pipeline (one
        round trip). With ``commits=True`` the statement is a ``CALL`` of a procedure that
        does this itself (commits, then returns the flush position as its last output
        parameter): it is sent alone, and the rows returned leave that column out. After a
        classified failure (connection lost, shutdown, the primary turned standby, ...) the
        whole statement is retried with backoff on whatever host is then the primary, until
        ``failover_timeout``; it must therefore be safe to apply twice (sessions/ makes it
        so with operation ids). ``setup`` (a statement and its parameters, or a list of
        them run in order) runs first in the same transaction, on every attempt: e.g.
        ``set_config(..., true)`` for settings that must not outlive the transaction on a
        pooled connection. ``retry_params``, when given,
        replace ``params`` on the second and later attempts (a statement may take a cheaper
        path when it knows it is a first delivery). ``fenced_query`` is for a router that
        fences writes (one cluster has nothing to fence: ignored). Returns the statement's
        rows and the token, which is also remembered for the session.

        With ``RouterConfig.coalesce_writes``, a write that finds others in flight waits for
        the next batch: the writes queued meanwhile run in one transaction (one round trip,
        one commit) with the same ``setup``, each caller getting its own rows and the
        batch's token. In a batch the statement runs as ``query``, or as ``batch_query``
        (with the same ``params``) when ``commits=True``: a form that does not commit; a
        commits=True write without one always runs alone. If the batch fails, each of its
        writes runs alone as above, with ``retry_params``; a caller cancelled while queued
        withdraws its write (never sent). A write that finds no other in flight runs at once.

        Raises :class:`SplitBrainError` (nothing written), :class:`NoPrimaryError` (no
        primary within ``failover_timeout``), :class:`OverloadedError` (the primary is busy:
        not retried, nothing written) or the original psycopg error (data, constraint and
        programming errors are never retried).
        """
        if running_loop() is not self._loop:
            return await self._write_away(
                operation, key, query, params, commits, setup, retry_params, batch_query
            )
        self._require_open()
        t0 = time.monotonic()
        deadline = t0 + self.config.failover_timeout
        self._counters.emit("on_route", operation, "primary", "write")
        k = route_key(key)
        try:
            c = self._coalescer
            in_batch = batch_query if batch_query is not None else (None if commits else query)
            if c is None or in_batch is None:
                rows, token = await self._write_with_retries(
                    operation, query, params, deadline, commits, setup, retry_params
                )
            elif c.runs_alone():
                self._counters.emit("on_write_coalescing", operation, "alone")
                try:
                    rows, token = await self._write_with_retries(
                        operation, query, params, deadline, commits, setup, retry_params
                    )
                finally:
                    c.release()
            else:
                again = params if retry_params is None else retry_params
                alone = partial(
                    self._write_with_retries,
                    operation,
                    query,
                    again,
                    deadline,
                    commits,
                    setup,
                    retry_params,
                )
                sid = "" if k is None else k.session_id
                rows, token = await c.queued(operation, sid, in_batch, params, setup, alone)
        except BaseException as exc:
            self._counters.add("write_error")
            seconds = time.monotonic() - t0
            self._counters.emit("on_operation", operation, "primary", seconds, short_error(exc))
            raise
        self._counters.add("write")
        if k is not None:
            self._tokens.remember(k, parse_lsn(token))
        self._counters.emit("on_operation", operation, "primary", time.monotonic() - t0, None)
        return rows, token

    def _write_away(
        self,
        operation: str,
        key: KeyLike,
        query: Query,
        params: Params | None,
        commits: bool,
        setup: Setups | None,
        retry_params: Params | None,
        batch_query: Query | None,
    ) -> Coroutine[Any, Any, tuple[Rows, str]]:
        # apart from execute_write: a closure there would make its arguments cells, built
        # on every call (garbage the collector counts) though only this path uses them
        return self._away(
            lambda r: r.execute_write(
                operation,
                key,
                query,
                params,
                commits=commits,
                setup=setup,
                retry_params=retry_params,
                batch_query=batch_query,
            )
        )

    def _withdrawn(self, operation: str) -> None:
        self._counters.emit("on_write_coalescing", operation, "withdrawn")

    async def _run_batch(self, batch: list[Pending[tuple[Rows, str]]]) -> None:
        """Send ``batch`` in one transaction and settle each write's future; if it fails,
        each write runs alone (ordinary path, retries and op ids: exactly once)."""
        try:
            await self._send_batch(batch)
        except BaseException:
            for p in batch:  # the loop is ending: no caller waits forever
                if not p.future.done():
                    p.future.cancel()
            raise

    async def _send_batch(self, batch: list[Pending[tuple[Rows, str]]]) -> None:
        emit = self._counters.emit
        sent = time.monotonic()
        for p in batch:
            emit("on_batch_wait", p.operation, sent - p.queued_at)
        try:
            results, token = await self._attempt_batch(batch)
        except (OverloadedError, SplitBrainError, RouterClosedError) as exc:
            emit("on_write_batch", len(batch), "refused")
            for p in batch:  # nothing was sent
                emit("on_write_coalescing", p.operation, "refused")
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        except Exception:
            emit("on_write_batch", len(batch), "failed")
            await self._run_alone(batch)
            return
        emit("on_write_batch", len(batch), "committed")
        for p, rows in zip(batch, results, strict=True):
            emit("on_write_coalescing", p.operation, "batched")
            if not p.future.done():
                p.future.set_result((rows, token))

    async def _run_alone(self, batch: list[Pending[tuple[Rows, str]]]) -> None:
        """After a failed batch: each write alone, a session's writes one after another."""
        by_session: dict[str, list[Pending[tuple[Rows, str]]]] = {}
        for p in batch:
            if not p.future.done():
                by_session.setdefault(p.key, []).append(p)

        async def in_order(writes: list[Pending[tuple[Rows, str]]]) -> None:
            for p in writes:
                self._counters.emit("on_write_coalescing", p.operation, "fallback")
                try:
                    result = await p.alone()
                except BaseException as exc:
                    if not p.future.done():
                        p.future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    if not p.future.done():
                        p.future.set_result(result)

        await asyncio.gather(*(in_order(w) for w in by_session.values()))

    async def _attempt_batch(
        self, batch: list[Pending[tuple[Rows, str]]]
    ) -> tuple[list[Rows], str]:
        self._require_open()
        h = await self._primary_for_write()
        assert h.pool is not None
        wait = self.config.pool_timeout
        try:
            async with h.pool.connection(
                wait=wait, as_primary=True, on_wait=self._on_pool_wait(h)
            ) as conn:
                results, token = await execution.write_batch(
                    conn,
                    [(p.query, p.params) for p in batch],
                    self._deadline_for_statement(),
                    batch[0].setup,
                )
        except Exception as exc:
            await self._write_attempt_failed("write_batch", h, exc)
            raise
        h.saw_flush(parse_lsn(token))
        return results, token

    async def _write_attempt_failed(self, operation: str, h: Host, exc: Exception) -> None:
        """What a failed write attempt on ``h`` tells the router: overload raises
        :class:`OverloadedError` (no ban); a retryable failure marks ``h`` suspect and, for a
        lost connection, rechecks its other idle connections before the retry."""
        if self._busy(operation, h, exc):
            self._overloaded(h, exc)
        if classify(exc, write=True) is not None:
            self._failed(h, exc)
            if is_connection_loss(exc) and h.pool is not None:
                # retry on fresh connections, not on the dead ones beside this one
                await h.pool.recheck()

    def _write_retryable(self, exc: BaseException) -> bool:
        if not self._open:
            return False
        return isinstance(exc, _NoPrimaryYet) or classify(exc, write=True) is not None

    def _count_write_retry(self, operation: str, exc: BaseException | None) -> None:
        reason = "no_primary" if isinstance(exc, _NoPrimaryYet) else None
        reason = reason or (classify(exc, write=True) if exc is not None else None) or "other"
        self._counters.add("retry", "write", reason)
        self._counters.emit("on_retry", operation, reason)

    def _raise_write_failure(self, exc: _NoPrimaryYet | psycopg.Error) -> NoReturn:
        """Raise what a write that ended with ``exc`` (and will not be retried) raises."""
        if not self._open:
            raise RouterClosedError("the router was closed during the write") from exc
        if not self._write_retryable(exc):
            raise exc
        raise NoPrimaryError(
            f"no writable primary within failover_timeout={self.config.failover_timeout}s",
            self._monitor.host_states(),
        ) from (None if isinstance(exc, _NoPrimaryYet) else exc)

    async def _write_with_retries(
        self,
        operation: str,
        query: Query,
        params: Params | None,
        deadline: float,
        commits: bool,
        setup: Setups | None,
        retry_params: Params | None,
    ) -> tuple[Rows, str]:
        # the first attempt runs outside tenacity: setting up its retry state costs about as
        # much CPU as the write itself, and almost every write succeeds at once
        try:
            return await self._attempt_write(operation, query, params, deadline, commits, setup)
        except (_NoPrimaryYet, psycopg.Error) as exc:
            if not self._write_retryable(exc):
                self._raise_write_failure(exc)
            self._count_write_retry(operation, exc)
        await asyncio.sleep(max(0.0, min(backoff(1), deadline - time.monotonic())))
        if retry_params is not None:
            params = retry_params
        return await self._write_retrying(operation, query, params, deadline, commits, setup)

    async def _write_retrying(
        self,
        operation: str,
        query: Query,
        params: Params | None,
        deadline: float,
        commits: bool,
        setup: Setups | None,
    ) -> tuple[Rows, str]:
        """The retries after a write's first attempt failed (retryably), with tenacity."""

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            self._count_write_retry(operation, exc)

        left = max(0.0, deadline - time.monotonic())
        retrying = write_retrying(left, self._write_retryable, before_sleep)
        try:
            async for retry in retrying:
                with retry:
                    return await self._attempt_write(
                        operation, query, params, deadline, commits, setup
                    )
        except (_NoPrimaryYet, psycopg.Error) as exc:
            self._raise_write_failure(exc)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt_write(
        self,
        operation: str,
        query: Query,
        params: Params | None,
        deadline: float,
        commits: bool,
        setup: Setups | None,
    ) -> tuple[Rows, str]:
        self._require_open()
        h = await self._primary_for_write()
        assert h.pool is not None
        wait = min(self.config.pool_timeout, max(0.05, deadline - time.monotonic()))
        try:
            async with h.pool.connection(
                wait=wait, as_primary=True, on_wait=self._on_pool_wait(h)
            ) as conn:
                rows, token = await execution.write(
                    conn, query, params, self._deadline_for_statement(), commits, setup
                )
        except Exception as exc:
            await self._write_attempt_failed(operation, h, exc)
            raise
        h.saw_flush(parse_lsn(token))
        return rows, token

    async def _primary_for_write(self) -> Host:
        mon = self._monitor
        for fresh_check in (False, True):
            if mon.split:
                self._counters.add("split_brain")
                self._counters.emit("on_split_brain")
                raise SplitBrainError(list(mon.split))
            h = self._hosts.get(mon.primary) if mon.primary else None
            if h is not None and h.usable:
                return h
            if not fresh_check:
                await mon.refresh(after=h.suspect_at if h is not None else None)
        raise _NoPrimaryYet()

    # reads -----------------------------------------------------------------------------
    def _read_away(
        self,
        operation: str,
        key: KeyLike,
        query: Query,
        params: Params | None,
        token: str | None,
        setup: Setups | None,
        replay_column: bool,
    ) -> Coroutine[Any, Any, Rows]:
        # apart from execute_read, as _write_away is from execute_write
        return self._away(
            lambda r: r.execute_read(
                operation,
                key,
                query,
                params,
                token=token,
                setup=setup,
                replay_column=replay_column,
            )
        )

    async def execute_read(
        self,
        operation: str,
        key: KeyLike,
        query: Query,
        params: Params | None = None,
        *,
        token: str | None = None,
        setup: Setups | None = None,
        replay_column: bool = False,
    ) -> Rows:
        """Run one read-only statement where it sees what it must.

        The read requires the newest of: ``token`` and the token this router remembers for
        ``key`` (a :class:`RouteKey` or a session id: the session's own writes), the
        primary's WAL flush position at the monitor's last check (every write committed
        before it, from any server), and the admin floor. A replica serves the read if the
        monitor has seen it replay that far; otherwise the read waits up to
        ``catch_up_wait`` for the most advanced replica, then goes to the primary. On a lost
        connection or a recovery conflict it is retried at once elsewhere; a busy replica is
        skipped, a busy primary raises :class:`OverloadedError`. ``token`` must be a
        PostgreSQL LSN (ValueError naming it).
        ``setup`` runs first in the same implicit transaction (one pipeline), wherever the
        read runs. ``replay_column``: the query's first row ends with its own
        ``pg_last_wal_replay_lsn()::text`` (NULL on a primary). Evaluated as the query ends,
        it is a lower bound of the replica's position for any later statement: the router
        keeps it, so that later reads up to there skip the replay check (the column stays in
        the rows returned).

        With ``RouterConfig.coalesce_reads``, replica reads that start in the same event-loop
        step for the same host and ``setup`` go in one pipeline on one connection: one replay
        check for the group, then each read (its own snapshot, taken after the check). A
        read the check does not cover, or whose group failed, runs alone as above; a read
        with no company runs alone.
        """
        if running_loop() is not self._loop:
            return await self._read_away(operation, key, query, params, token, setup, replay_column)
        self._require_open()
        token_lsn = self._tokens.required(route_key(key), token)
        t0 = time.monotonic()
        deadline = t0 + self.config.failover_timeout
        excluded: set[str] = set()
        allow_wait = True
        idle_rounds = 0
        role = "unknown"
        try:
            while True:
                self._require_open()
                mon = self._monitor
                need = required_position(token_lsn, mon.primary_lsn, self._floor.lsn)
                plan = self._plan_read(
                    self._host_list,
                    mon.primary,
                    need,
                    self.config,
                    excluded=excluded,
                    allow_wait=allow_wait,
                )
                if plan.host is None:
                    self._no_host_for_read(plan, deadline)
                    idle_rounds += 1
                    await asyncio.sleep(backoff(idle_rounds))
                    await mon.refresh()
                    excluded.clear()
                    allow_wait = True
                    continue
                h = plan.host
                role = h.role
                try:
                    rows = await self._read_once(
                        plan, query, params, deadline, token_lsn, setup, operation
                    )
                    if replay_column and rows and h.role == "replica":
                        _saw_replay_column(h, rows[0])
                except _NotCaughtUp:
                    allow_wait = False
                    continue
                except Exception as exc:
                    if not self._open:
                        raise RouterClosedError("the router was closed during the read") from exc
                    if self._busy(operation, h, exc):
                        if h.role == "primary":
                            self._overloaded(h, exc)
                        excluded.add(h.label)  # try another host; no ban
                        continue
                    why = classify(exc, write=False)
                    if why is None:
                        raise
                    self._failed(h, exc)
                    excluded.add(h.label)
                    self._counters.add("retry", "read", why)
                    self._counters.emit("on_retry", operation, why)
                    if time.monotonic() >= deadline:
                        raise
                    continue
                h.reads += 1
                self._counters.add("read", role, plan.reason)
                self._counters.emit("on_route", operation, role, plan.reason)
                self._counters.emit("on_operation", operation, role, time.monotonic() - t0, None)
                return rows
        except BaseException as exc:
            self._counters.add("read_error")
            self._counters.emit(
                "on_operation", operation, role, time.monotonic() - t0, short_error(exc)
            )
            raise

    def _no_host_for_read(self, plan: ReadPlan[Host], deadline: float) -> None:
        """Raise if the read may not wait for a host any longer; else return (it waits)."""
        states = self._monitor.host_states
        if plan.reason == "no_eligible_replica" and self.config.no_replica_policy == "error":
            raise NoEligibleReplicaError(
                "no replica is eligible and no_replica_policy='error'", states()
            )
        if time.monotonic() < deadline:
            return
        if plan.reason == "no_eligible_replica":
            raise NoEligibleReplicaError(
                "no replica became eligible within "
                f"failover_timeout={self.config.failover_timeout}s",
                states(),
            )
        raise NoPrimaryError(
            f"no host could serve the read within failover_timeout={self.config.failover_timeout}s",
            states(),
        )

    async def _read_once(
        self,
        plan: ReadPlan[Host],
        query: Query,
        params: Params | None,
        deadline: float,
        token_lsn: int | None,
        setup: Setups | None = None,
        operation: str = "",
    ) -> Rows:
        h = plan.host
        assert h is not None and h.pool is not None
        # the pool as planned: the monitor may retire it while the read waits for its group
        # (a closed pool raises PoolClosed, retried elsewhere)
        pool = h.pool
        # the whole attempt (checkout included) gets one statement deadline on a replica:
        # past it, another host is a better bet than this one's queue
        budget = self._deadline_for_statement() + self.config.catch_up_wait
        start = time.monotonic()
        wait = min(self.config.pool_timeout, max(0.05, deadline - start))
        on_replica = h.role == "replica"
        if on_replica:
            wait = min(wait, budget)
        # the primary's position as known: the last check's, or a write's token since
        known = self._monitor.primary_lsn
        known = h.seen_flush if known is None or h.seen_flush > known else known
        check_token = not on_replica and token_lsn is not None and token_lsn > known
        if on_replica and self._read_groups is not None:
            grouped = await self._read_groups.join(
                h.label, setup, query, params, plan.wait_lsn, operation
            )
            if grouped is not None:
                return grouped
            # alone: no other read started with it, its group failed, or the group's replay
            # check did not cover its position (it waits on its own below)
        async with pool.connection(
            wait=wait, as_primary=not on_replica, on_wait=self._on_pool_wait(h)
        ) as conn:
            left = budget - (time.monotonic() - start) if on_replica else budget
            with watchdog(conn, max(0.1, left)):
                if plan.wait_lsn is not None:
                    served_wait = None
                    if h.replay_wait:
                        quiet = h.in_flight <= 1
                        served_wait = self._replay_wait_quiet if quiet else self._replay_wait
                    try:
                        rows, seen = await execution.read_if_replayed(
                            conn, plan.wait_lsn, query, params, setup, served_wait
                        )
                    except execution.NoReplayWait:
                        h.lacks_replay_wait()
                        rows, seen, served_wait = None, None, None
                    if seen is not None:
                        h.saw_replay(seen)  # later reads up to here skip the check
                    if rows is not None:
                        return rows
                    if not await execution.wait_replay(
                        conn, plan.wait_lsn, self.config.catch_up_wait, served_wait
                    ):
                        raise _NotCaughtUp()
                    h.saw_replay(plan.wait_lsn)
                if check_token:
                    assert token_lsn is not None
                    rows, flush = await execution.read_with_primary_lsn(conn, query, params, setup)
                    if flush is not None and self._tokens.cap(token_lsn, flush):
                        self._counters.add("token_capped")
                        self._counters.emit("on_token_capped")
                    return rows
                return await execution.read(conn, query, params, setup)

    def _read_alone(self, outcome: str, member: Member) -> None:
        self._counters.emit("on_read_coalescing", member.operation, outcome)

    def _start_read_group(self, group: Group) -> None:
        task = asyncio.get_running_loop().create_task(self._run_read_group(group))
        self._group_tasks.add(task)
        task.add_done_callback(self._group_tasks.discard)

    async def _run_read_group(self, group: Group) -> None:
        """Run a group of replica reads in one pipeline on one connection and settle each
        member: its rows, or None (it runs alone) when the group failed.

        Members the replay check covered are answered at once. When it fell short of the
        others, the group waits for the replica on the same connection (``catch_up_wait``)
        and reads theirs again in one more pipeline: one poll for all of them, not a
        checkout, a wasted read and a poll each; past the wait they go to the primary, as a
        read alone would."""
        members = group.members
        pending = list(range(len(members)))  # members not settled yet
        failed = timed_out = False
        h = self._hosts.get(group.host)
        emit = self._counters.emit
        sent = time.monotonic()
        for m in members:
            emit("on_read_group_wait", m.operation, sent - m.joined_at)
        try:
            if h is None or h.pool is None or not h.usable:
                failed = True  # each read runs alone, and finds another host
                return
            budget = self._deadline_for_statement() + self.config.catch_up_wait
            async with h.pool.connection(
                wait=min(self.config.pool_timeout, budget),
                as_primary=False,
                on_wait=self._on_pool_wait(h),
            ) as conn:
                # the check and the reads, and for what it missed a wait and the reads again
                with watchdog(conn, budget + self.config.catch_up_wait):
                    need = check_lsn(members)
                    wait = self._replay_wait if need is not None and h.replay_wait else None
                    results, seen = await execution.read_group(
                        conn, need, [(m.query, m.params) for m in members], group.setup, wait
                    )
                    if seen is not None:
                        h.saw_replay(seen)  # later reads up to here skip the check
                    self._counters.add("read_group")
                    covered = served(members, seen)
                    answers = {i: results[i] for i in pending if covered[i]}
                    pending = self._settle_grouped(members, pending, answers, "grouped")
                    short = [members[i] for i in pending]
                    need = check_lsn(short)
                    if need is not None and not await execution.wait_replay(
                        conn, need, self.config.catch_up_wait, wait
                    ):
                        timed_out = True
                    elif need is not None:
                        h.saw_replay(need)
                        again, _ = await execution.read_group(
                            conn, None, [(m.query, m.params) for m in short], group.setup
                        )
                        answers = dict(zip(pending, again, strict=True))
                        pending = self._settle_grouped(members, pending, answers, "waited")
        except Exception as exc:
            failed = True  # each read left runs alone and meets the failure on its own path
            if h is not None and execution.lacks_replay_wait(exc):
                h.lacks_replay_wait()
        finally:
            emit("on_read_group", len(members), "failed" if failed else "served")
            for i in pending:
                m = members[i]
                if m.future.done():
                    emit("on_read_coalescing", m.operation, "withdrawn")
                elif timed_out:
                    emit("on_read_coalescing", m.operation, "uncovered")
                    m.future.set_exception(_NotCaughtUp())  # the caller replans: the primary
                else:
                    emit("on_read_coalescing", m.operation, "fallback")
                    m.future.set_result(None)

    def _settle_grouped(
        self,
        members: list[Member],
        pending: list[int],
        answers: dict[int, Rows],
        outcome: str,
    ) -> list[int]:
        """Answer the pending members that have rows in ``answers`` (by index; ``outcome``
        grouped or waited), drop those whose caller has gone; return the ones still
        pending."""
        emit = self._counters.emit
        left = []
        for i in pending:
            m = members[i]
            if m.future.done():
                emit("on_read_coalescing", m.operation, "withdrawn")
            elif i in answers:
                self._counters.add("read_grouped")
                emit("on_read_coalescing", m.operation, outcome)
                m.future.set_result(answers[i])
            else:
                left.append(i)
        return left

    # admin -----------------------------------------------------------------------------
    @asynccontextmanager
    async def primary_connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """An autocommit connection to the primary for admin work (migrations).

        Waits up to ``failover_timeout`` for a primary; no retry once the block runs. The
        connection is closed afterwards (never reused: nothing the block sets reaches a
        request). When the block ends, the primary's WAL flush position becomes a floor for
        every later read through this router, so a table created here is never missing on
        the replica a read goes to; and the monitor asks a replica that found no
        wait_replay in the schema again once it has replayed that far.
        """
        if running_loop() is not self._loop:
            # the primary is found where this caller is served; the block's connection is
            # its own, opened and used on the caller's loop
            h = await self._away(lambda r: r._primary_for_admin())
        else:
            h = await self._primary_for_admin()
        assert h.pool is not None
        async with h.pool.admin_connection() as conn:
            try:
                yield conn
            finally:
                await self._raise_floor(conn)
                for router in (self, self._twin):
                    if router is not None:
                        router._monitor.schema_changed(self._floor.lsn)

    async def _primary_for_admin(self) -> Host:
        self._require_open()
        deadline = time.monotonic() + self.config.failover_timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._primary_for_write()
            except _NoPrimaryYet:
                if time.monotonic() >= deadline:
                    raise NoPrimaryError(
                        "no writable primary within failover_timeout", self._monitor.host_states()
                    ) from None
                await asyncio.sleep(backoff(attempt))

    async def _raise_floor(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if conn.closed or conn.pgconn.transaction_status != TransactionStatus.IDLE:
            return
        try:
            with watchdog(conn, self._deadline_for_statement()):
                cur = await conn.execute(execution.TOKEN_SQL)
                row = await cur.fetchone()
        except psycopg.Error:
            return
        if row is not None:
            self._floor.lsn = max(self._floor.lsn, parse_lsn(str(row[0])))


def _saw_replay_column(h: Host, row: tuple[Any, ...]) -> None:
    """Keep the replay position a read reported in its row's last column, for ``h``."""
    text = row[-1] if row else None
    if isinstance(text, str):
        h.saw_replay(parse_lsn(text))


def _overload_text(exc: BaseException, config: RouterConfig) -> str:
    from psycopg_pool import TooManyRequests

    if isinstance(exc, TooManyRequests):
        return (
            f"{config.pool_max_waiting} requests already wait for a connection "
            "(RouterConfig.pool_max_waiting)"
        )
    if isinstance(exc, psycopg.Error) and getattr(exc, "sqlstate", None):
        return f"server out of resources ({exc.sqlstate}: {type(exc).__name__})"
    return f"no connection within pool_timeout={config.pool_timeout}s (pool exhausted)"


if TYPE_CHECKING:

    def _is_a_router(r: SessionRouter) -> Router:
        return r  # mypy: SessionRouter implements the Router protocol
