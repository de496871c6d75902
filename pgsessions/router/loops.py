"""Which event loop a router's work runs on: its owner loop, a loop thread, and fork.

A router's pools, locks and tasks belong to the event loop that opened it (psycopg_pool's
AsyncConnectionPool is loop-bound: used from another loop it hangs until PoolTimeout). Work
awaited on any other loop is sent to a :class:`LoopThread` (``run_coroutine_threadsafe``)
and awaited from the caller's loop (``wrap_future``); cancellation passes both ways. That
thread's loop is never one the application can block, which the owner loop may be (a sync
caller waiting on threads that call the router).

Fork: a child must never use or close the parent's connections (closing a psycopg
connection sends Terminate on a socket the parent shares, and ending the parent's session
with it). After a fork, in the child, every connection a router opened gets its socket
replaced by ``/dev/null`` (so nothing, not even a finalizer, can reach the parent's
server session through it) and every router says, at its next call, that it must be opened
again in this process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import psycopg

from ..errors import RouterClosedError

T = TypeVar("T")

#: every connection a router opened in this process (see :func:`neuter_inherited`)
_connections: weakref.WeakSet[psycopg.AsyncConnection[Any]] = weakref.WeakSet()
#: callbacks run in a forked child (each router registers one, weakly)
_at_fork: weakref.WeakSet[Any] = weakref.WeakSet()
_lock = threading.Lock()


def track_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    """Remember ``conn`` so that a forked child can cut itself off from it."""
    _connections.add(conn)


def on_fork_in_child(owner: Any) -> None:
    """Call ``owner._forked()`` in a child process after ``os.fork()``."""
    _at_fork.add(owner)


def neuter_inherited() -> int:
    """Point the socket of every inherited connection at ``/dev/null``; return how many.

    The descriptor number stays taken (nothing new reuses it) and whatever libpq writes to
    it later (the Terminate of a finalizer, a TLS close) goes nowhere; the parent's socket
    and its server session are untouched.
    """
    conns = list(_connections)
    _connections.clear()
    if not conns:
        return 0
    devnull = os.open(os.devnull, os.O_RDWR)
    done = 0
    try:
        for conn in conns:
            try:
                fd = conn.pgconn.socket
            except psycopg.Error:
                continue  # already closed
            with contextlib.suppress(OSError):
                os.dup2(devnull, fd)
                done += 1
    finally:
        os.close(devnull)
    return done


def _after_fork_in_child() -> None:
    neuter_inherited()
    for owner in list(_at_fork):
        with contextlib.suppress(Exception):
            owner._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or None (plain sync code)."""
    return asyncio._get_running_loop()


class LoopThread:
    """An event loop run by a daemon thread of its own, to which coroutines are sent."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._ready = threading.Event()
        self._pid = os.getpid()
        #: seconds calls in flight get to finish once the loop is stopped
        self.grace = 5.0
        self._stop_sent = False
        self._stop_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LoopThread({self.name!r}, alive={self.alive})"

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        loop.call_soon(self._ready.set)
        try:
            loop.run_forever()
        finally:
            try:
                # calls in flight end first (a closed router retries nothing), so that no
                # write is cut off between its commit and its caller; then the rest
                tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
                if tasks:
                    loop.run_until_complete(asyncio.wait(tasks, timeout=self.grace))
                tasks = [t for t in tasks if not t.done()]
                for t in tasks:
                    t.cancel()
                if tasks:
                    loop.run_until_complete(asyncio.wait(tasks, timeout=2.0))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    @property
    def alive(self) -> bool:
        return (
            self._pid == os.getpid()
            and self._thread.is_alive()
            and self.loop.is_running()
            and not self.loop.is_closed()
        )

    def in_thread(self) -> bool:
        """Whether the caller runs on this loop's own thread."""
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; RouterClosedError (and ``coro`` closed) if it ended."""
        if not self.alive:
            coro.close()
            raise RouterClosedError(f"the router's event loop thread {self.name!r} has ended")
        try:
            return asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError as exc:  # closed between the check and the call
            coro.close()
            raise RouterClosedError(
                f"the router's event loop thread {self.name!r} has ended"
            ) from exc

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` run on this loop from the caller's loop (cancellation both ways)."""
        fut = self.submit(coro)
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if fut.cancelled() and task is not None and not task.cancelling():
                # the loop thread cancelled it (the router stopped), not our caller
                raise RouterClosedError("the router was stopped during the call") from None
            raise

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on this loop and block the (sync) caller for its result."""
        if self.in_thread():
            coro.close()
            raise RuntimeError("router.run_sync() was called on the router's own loop thread")
        fut = self.submit(coro)
        try:
            return fut.result(timeout)
        except concurrent.futures.CancelledError:
            raise RouterClosedError("the router was stopped during the call") from None
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the loop and join the thread; whether it ended within ``timeout``."""
        if self._pid != os.getpid() or not self._thread.is_alive():
            return True
        if timeout is not None:
            self.grace = min(self.grace, max(0.0, timeout - 2.5))
        with self._stop_lock:
            stop, self._stop_sent = not self._stop_sent, True
        if stop:  # once: a second stop() would cut the loop's own shutdown short
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.loop.stop)
        if not self.in_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()


def once(lock: threading.Lock, get: Callable[[], T | None], make: Callable[[], T]) -> T:
    """``get()`` if it is set, else ``make()`` under ``lock`` (double-checked)."""
    value = get()
    if value is not None:
        return value
    with lock:
        value = get()
        if value is None:
            value = make()
        return value
