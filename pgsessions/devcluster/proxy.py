"""A small asyncio TCP proxy for network faults: forward, blackhole, reject, cut, resume.

Put a host's traffic through a :class:`TcpProxy` and point the application at
``proxy.address`` instead of the server. The proxy runs in the caller's event loop;
:class:`ThreadedProxy` runs one in its own thread with a synchronous interface (for tests
whose event loop is busy or absent).

- ``forward``: bytes flow both ways (the default);
- ``blackhole``: connections stay open (new ones are accepted) but nothing is forwarded in
  either direction, like a partition where packets are silently dropped;
- ``reject``: new connections are closed at once, like a refused connection;
- :meth:`cut` closes every open connection (both sides), like a reset;
- :meth:`resume` forwards again (held bytes are delivered in order);
- :meth:`drop_after_reply` (one shot): when a server reply containing a marker, e.g. the
  CommandComplete of ``COMMIT`` (:func:`command_complete`), reaches the proxy, that connection
  is reset without passing the reply on: the server committed but the client never learns
  it (an ambiguous commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

ProxyMode = Literal["forward", "blackhole", "reject"]
_CHUNK = 65536
_T = TypeVar("_T")


def command_complete(tag: str) -> bytes:
    """The wire bytes of a CommandComplete message with ``tag`` (e.g. ``"COMMIT"``)."""
    body = tag.encode() + b"\x00"
    return b"C" + struct.pack("!I", 4 + len(body)) + body


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close a socket at once with a reset, so the peer sees the connection die."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(Exception):
        writer.transport.abort()


@dataclass(eq=False)
class _Pipe:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self) -> None:
        for w in (self.client, self.upstream):
            if w is not None:
                _abort(w)
        for t in self.tasks:
            t.cancel()


class TcpProxy:
    """Forwards ``listen_host:listen_port`` (0: a free port) to ``target_host:target_port``."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.mode: ProxyMode = "forward"
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._pipes: set[_Pipe] = set()
        self._server: asyncio.Server | None = None
        self.connections_total = 0
        self.drops = 0
        self._marker: bytes | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def address(self) -> tuple[str, int]:
        return self.listen_host, self.port

    @property
    def dsn_host(self) -> str:
        return f"{self.listen_host}:{self.port}"

    def dsn(self, dbname: str = "pgsessions", user: str = "postgres") -> str:
        return f"postgresql://{user}@{self.dsn_host}/{dbname}"

    @property
    def armed(self) -> bool:
        """A :meth:`drop_after_reply` is waiting for its marker."""
        return self._marker is not None

    @property
    def open_connections(self) -> int:
        return len(self._pipes)

    async def start(self) -> TcpProxy:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, self.listen_host, self.listen_port
            )
        return self

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
            self.cut()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        self.cut()

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # faults ------------------------------------------------------------------------------
    def blackhole(self) -> None:
        """Keep connections open but forward nothing (new connections hang too)."""
        self.mode = "blackhole"
        self._flowing.clear()

    def reject(self) -> None:
        """Close new connections at once (existing ones are left as they are)."""
        self.mode = "reject"
        self._flowing.set()

    def cut(self) -> int:
        """Close every open connection on both sides; returns how many were closed."""
        pipes, self._pipes = self._pipes, set()
        for p in pipes:
            p.close()
        return len(pipes)

    def resume(self) -> None:
        """Forward again."""
        self.mode = "forward"
        self._flowing.set()

    forward = resume

    def drop_after_reply(self, marker: bytes) -> None:
        """Arm a one-shot drop: the next server reply containing ``marker`` is swallowed
        and its connection reset at once."""
        self._marker = marker

    def _rejecting(self) -> bool:
        return self.mode == "reject"

    # plumbing ----------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_total += 1
        if self.mode == "reject":
            writer.transport.abort()
            return
        pipe = _Pipe(client=writer)
        self._pipes.add(pipe)
        try:
            await self._flowing.wait()  # a blackholed connect hangs like a dropped SYN/ACK
            if pipe not in self._pipes or self._rejecting():
                pipe.close()
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                pipe.close()
                self._pipes.discard(pipe)
                return
            pipe.upstream = up_writer
            if pipe not in self._pipes:  # cut while connecting
                pipe.close()
                return
            pipe.tasks = [
                asyncio.create_task(self._pump(reader, up_writer, pipe)),
                asyncio.create_task(self._pump(up_reader, writer, pipe, from_server=True)),
            ]
            await asyncio.gather(*pipe.tasks, return_exceptions=True)
        finally:
            pipe.close()
            self._pipes.discard(pipe)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pipe: _Pipe,
        *,
        from_server: bool = False,
    ) -> None:
        tail = b""
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                if not self._flowing.is_set():
                    await self._flowing.wait()
                if from_server and self._marker is not None:
                    window = tail + data
                    if self._marker in window:
                        self._marker = None
                        self.drops += 1
                        return  # finally: both sides reset, the reply is never delivered
                    tail = window[-64:]
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            pipe.close()


class ThreadedProxy:
    """A :class:`TcpProxy` on its own event loop in a daemon thread, controlled synchronously
    (thread-safe). Same faults; ``forward()`` resumes."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._proxy: TcpProxy | None = None
        self._target = (target_host, target_port)

    def start(self) -> ThreadedProxy:
        self._thread.start()

        async def make() -> TcpProxy:
            return await TcpProxy(*self._target).start()

        self._proxy = self._call(make())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self.proxy.stop())

        async def drain() -> None:
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in others:
                t.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        self._call(drain())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> ThreadedProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def proxy(self) -> TcpProxy:
        if self._proxy is None:
            raise RuntimeError("the proxy is not started")
        return self._proxy

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def dsn_host(self) -> str:
        return self.proxy.dsn_host

    def dsn(self, dbname: str = "pgsessions", user: str = "postgres") -> str:
        return self.proxy.dsn(dbname, user)

    @property
    def connections(self) -> int:
        return self.proxy.connections_total

    @property
    def drops(self) -> int:
        return self.proxy.drops

    @property
    def armed(self) -> bool:
        return self.proxy.armed

    def blackhole(self) -> None:
        self._run(self.proxy.blackhole)

    def forward(self) -> None:
        self._run(self.proxy.resume)

    def reject(self) -> None:
        self._run(self.proxy.reject)

    def cut(self) -> int:
        return self._run(self.proxy.cut)

    def drop_after_reply(self, marker: bytes) -> None:
        self._run(lambda: self.proxy.drop_after_reply(marker))

    def _run(self, fn: Callable[[], _T]) -> _T:
        async def call() -> _T:
            return fn()

        return self._call(call())

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)
