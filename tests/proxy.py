"""A small TCP proxy for network-fault tests, running its own event loop in a thread.

Modes: forward (default); :meth:`Proxy.blackhole` (keep every socket open but stop
forwarding, and accept new connections without ever answering); :meth:`Proxy.cut` (close
every connection now); :meth:`Proxy.drop_after_reply` (one-shot: when the server's reply
containing a marker, e.g. the CommandComplete of ``COMMIT``, reaches the proxy, drop that
connection without passing the reply on, so the server has committed but the client never
learns it: an ambiguous commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any


def command_complete(tag: str) -> bytes:
    """The wire bytes of a CommandComplete message with ``tag`` (e.g. ``"COMMIT"``)."""
    body = tag.encode() + b"\x00"
    return b"C" + struct.pack("!I", 4 + len(body)) + body


class Proxy:
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()
        self._blackholed = False
        self._resume = asyncio.Event()
        self._marker: bytes | None = None
        self.drops = 0
        self.connections = 0

    # control (thread-safe) --------------------------------------------------------------
    def start(self) -> Proxy:
        self._thread.start()
        self._call(self._start())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def dsn_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def dsn(self, dbname: str = "pgsessions", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def blackhole(self) -> None:
        """Stop forwarding in both directions; connections stay open and silent."""
        self._call(self._set_blackhole(True))

    def forward(self) -> None:
        """Forward again (data held during the blackhole is then delivered)."""
        self._call(self._set_blackhole(False))

    def cut(self) -> None:
        """Close every open connection (clients see the server vanish)."""
        self._call(self._cut())

    def drop_after_reply(self, marker: bytes) -> None:
        """Arm a one-shot drop: the next server reply containing ``marker`` is swallowed
        and its connection closed at once."""
        self._call(self._arm(marker))

    @property
    def armed(self) -> bool:
        return self._marker is not None

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # inside the loop ------------------------------------------------------------------
    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._resume.set()

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()
        self._resume.set()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in others:
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _set_blackhole(self, on: bool) -> None:
        self._blackholed = on
        if on:
            self._resume.clear()
        else:
            self._resume.set()

    async def _arm(self, marker: bytes) -> None:
        self._marker = marker

    async def _cut(self) -> None:
        for client, upstream in list(self._conns):
            _abort(client)
            if upstream is not None:
                _abort(upstream)
        self._conns.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        entry: tuple[asyncio.StreamWriter, asyncio.StreamWriter | None] = (writer, None)
        self._conns.add(entry)
        await self._resume.wait()  # a blackholed proxy accepts but never answers
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._conns.discard(entry)
            _abort(writer)
            return
        self._conns.discard(entry)
        entry = (writer, up_writer)
        self._conns.add(entry)
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, entry, from_server=False),
                self._pipe(up_reader, writer, entry, from_server=True),
            )
        finally:
            self._conns.discard(entry)
            _abort(writer)
            _abort(up_writer)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        entry: tuple[asyncio.StreamWriter, asyncio.StreamWriter | None],
        *,
        from_server: bool,
    ) -> None:
        tail = b""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                await self._resume.wait()
                if from_server and self._marker is not None:
                    window = tail + data
                    if self._marker in window:
                        self._marker = None
                        self.drops += 1
                        for w in entry:
                            if w is not None:
                                _abort(w)
                        return
                    tail = window[-64:]
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            _abort(writer)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close a socket at once with a reset, so the peer sees the connection die."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(Exception):
        writer.transport.abort()
