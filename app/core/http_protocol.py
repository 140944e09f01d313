"""uvicorn's httptools protocol with a cap on the request head (`MAX_HEADER_BYTES`).

httptools accepts a request line and headers of any size. This subclass adds up the URL and
the header names and values of each request once its head is complete; over the cap the
client gets 431 and the connection is closed, before the app sees the request. Until then
httptools and uvicorn buffer the head, so reads that fall wholly inside a head are counted
as they come: a head that never ends is cut off after about the cap plus one read.

Run it with `uvicorn --http app.core.http_protocol:HeaderCappedProtocol` (`make run`, the
Dockerfile, `live-polling` and the tests do).
"""

from __future__ import annotations

from functools import cache
from itertools import chain
from typing import Any

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.core.config import load_settings

PROTOCOL = "app.core.service_protocol:ServiceProtocol"  # this class, and more


@cache
def header_cap() -> int:
    return load_settings().max_header_bytes


class HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head over the cap."""


class HeaderCappedProtocol(HttpToolsProtocol):
    # The base class is called directly, not through super(): this runs for every request,
    # and super() doubles the cost of these small overrides.

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        HttpToolsProtocol.__init__(self, *args, **kwargs)
        self.cap = header_cap()
        self.read_bytes = 0  # whole reads inside a head begun in an earlier read
        self.in_head = False
        self.began = False
        self.rejected = False

    def on_message_begin(self) -> None:
        self.read_bytes = 0
        self.in_head = self.began = True
        HttpToolsProtocol.on_message_begin(self)

    def on_headers_complete(self) -> None:
        self.in_head = False
        if len(self.url) + sum(map(len, chain.from_iterable(self.headers))) > self.cap:
            self.rejected = True
            raise HeadTooLarge  # stops the parser; uvicorn then calls send_400_response
        HttpToolsProtocol.on_headers_complete(self)

    def data_received(self, data: bytes) -> None:
        inside, self.began = self.in_head, False
        HttpToolsProtocol.data_received(self, data)
        if inside and self.in_head and not self.began and not self.transport.is_closing():
            self.read_bytes += len(data)  # all of `data` was part of this head
            if self.read_bytes > self.cap:
                self.rejected = True
                self.send_431_response()

    def send_400_response(self, msg: str) -> None:
        if self.rejected:
            self.send_431_response()
        else:
            HttpToolsProtocol.send_400_response(self, msg)

    def send_431_response(self) -> None:
        body = msgspec.json.encode(
            {"detail": f"request line and headers must be at most {self.cap} bytes"}
        )
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        self.transport.close()
