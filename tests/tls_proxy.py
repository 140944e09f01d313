"""A TLS-terminating TCP proxy in front of a plain node: the service's client speaks real
TLS (rediss://) to it. The bundled valkey has no TLS, so the proxy stands in for that part."""

from __future__ import annotations

import asyncio
import contextlib
import ssl


class TlsProxy:
    def __init__(self, upstream_port: int, context: ssl.SSLContext) -> None:
        self.upstream_port = upstream_port
        self.context = context
        self.port = 0
        self.handshakes = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> TlsProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        node_r, node_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

        tasks = [
            asyncio.create_task(pipe(client_r, node_w)),
            asyncio.create_task(pipe(node_r, client_w)),
        ]
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for writer in (client_w, node_w):
            writer.close()
