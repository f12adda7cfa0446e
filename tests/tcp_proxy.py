"""A loopback TCP proxy that a test can cut: Redis unreachable for a while, then back with its data.

``redis-server`` stopped and started again comes back empty (tests/redis_server.py); a network
that drops and refuses connections for a few seconds leaves Redis as it was. This is the second.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

CHUNK = 65_536


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target_port``. :meth:`cut` drops every
    connection and refuses new ones until :meth:`mend`."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    def __repr__(self) -> str:
        return f"TcpProxy({self.port} -> {self._target_port}, up={self._server is not None})"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def __aenter__(self) -> TcpProxy:
        await self.mend()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cut()

    async def mend(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._open):
            writer.transport.abort()  # as a dropped network: no FIN, the peer sees a reset
        self._open.clear()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            far_reader, far_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        except OSError:
            writer.transport.abort()
            return
        self._open.update((writer, far_writer))
        await asyncio.gather(_copy(reader, far_writer), _copy(far_reader, writer))
        for end in (writer, far_writer):
            self._open.discard(end)
            end.transport.abort()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()
