"""A small asyncio TCP proxy for network faults: forward, blackhole, reject, cut, resume.

Put a host's traffic through a :class:`TcpProxy` and point the application at
``proxy.address`` instead of the server. The proxy runs in the caller's event loop.

- ``forward``: bytes flow both ways (the default);
- ``blackhole``: connections stay open (new ones are accepted) but nothing is forwarded in
  either direction, like a partition where packets are silently dropped;
- ``reject``: new connections are closed at once, like a refused connection;
- :meth:`cut` closes every open connection (both sides), like a reset;
- :meth:`resume` forwards again (held bytes are delivered in order).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Literal

ProxyMode = Literal["forward", "blackhole", "reject"]
_CHUNK = 65536


@dataclass(eq=False)
class _Pipe:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self) -> None:
        for w in (self.client, self.upstream):
            if w is not None:
                with contextlib.suppress(Exception):
                    w.transport.abort()
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
                asyncio.create_task(self._pump(up_reader, writer, pipe)),
            ]
            await asyncio.gather(*pipe.tasks, return_exceptions=True)
        finally:
            pipe.close()
            self._pipes.discard(pipe)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pipe: _Pipe
    ) -> None:
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                if not self._flowing.is_set():
                    await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            pipe.close()
