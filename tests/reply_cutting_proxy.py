"""A TCP proxy between the service and a node that, on demand, lets a batch (an EVAL) reach
the node and then cuts the connection instead of passing the node's reply back."""

from __future__ import annotations

import asyncio
import contextlib


class ReplyCuttingProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.cuts_left = 0
        self.cuts_done = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    async def start(self) -> ReplyCuttingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        node_r, node_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        sent_eval = asyncio.Event()

        async def to_node() -> None:
            while data := await client_r.read(65536):
                if b"EVAL" in data.upper():
                    sent_eval.set()
                node_w.write(data)
                await node_w.drain()

        async def to_client() -> None:
            while data := await node_r.read(65536):
                if sent_eval.is_set() and self.cuts_left > 0:
                    self.cuts_left -= 1
                    self.cuts_done += 1
                    return  # the node applied the batch; its reply is dropped with the link
                client_w.write(data)
                await client_w.drain()

        tasks = [asyncio.create_task(to_node()), asyncio.create_task(to_client())]
        with contextlib.suppress(ConnectionError):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for writer in (client_w, node_w):
            writer.close()
