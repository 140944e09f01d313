"""TCP proxies between the service and a node, for breaking the link on purpose.

`Proxy` forwards every byte (optionally terminating TLS, since the bundled valkey has none);
`ReplyCuttingProxy` lets a batch (the EVAL of the script that increments counts) reach the
node and then cuts the connection instead of passing the node's reply back."""

from __future__ import annotations

import asyncio
import contextlib
import ssl


class Proxy:
    def __init__(self, upstream_port: int, tls: ssl.SSLContext | None = None) -> None:
        self.upstream_port = upstream_port
        self.tls = tls
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}"

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def passes_to_node(self, link: dict[str, bool], data: bytes) -> None:
        """Sees each chunk the service sends; `link` is state kept per connection."""

    def passes_to_service(self, link: dict[str, bool], data: bytes) -> bool:
        """Sees each chunk the node answers; False cuts the connection instead."""
        return True

    def keeps_reply(self, link: dict[str, bool], data: bytes) -> bool:
        """Sees each chunk that passed; False drops it and keeps the connection open."""
        return True

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        node_r, node_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        link: dict[str, bool] = {}

        async def to_node() -> None:
            while data := await client_r.read(65536):
                self.passes_to_node(link, data)
                node_w.write(data)
                await node_w.drain()

        async def to_service() -> None:
            while data := await node_r.read(65536):
                if not self.passes_to_service(link, data):
                    return
                if not self.keeps_reply(link, data):
                    continue
                client_w.write(data)
                await client_w.drain()

        tasks = [asyncio.create_task(to_node()), asyncio.create_task(to_service())]
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for writer in (client_w, node_w):
            writer.close()


class ReplyCuttingProxy(Proxy):
    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.cuts_left = 0
        self.cuts_done = 0

    def passes_to_node(self, link: dict[str, bool], data: bytes) -> None:
        if b"HINCRBY" in data:  # the batch script (reads and option checks are EVALs too)
            link["sent_eval"] = True

    def passes_to_service(self, link: dict[str, bool], data: bytes) -> bool:
        if link.get("sent_eval") and self.cuts_left > 0:
            self.cuts_left -= 1
            self.cuts_done += 1
            return False  # the node applied the batch; its reply is dropped with the link
        return True
