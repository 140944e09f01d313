"""The bytes of a live results stream, encoded once per event for every subscriber.

An event is a default Server-Sent Events message, `id: <version>` and `data: <the results
JSON>`. The broadcaster writes HTTP/1.1 chunks (the response has no Content-Length, so
uvicorn sends it chunked), so each event is also wrapped as one chunk, once.
"""

from __future__ import annotations

PING = b": ping\n\n"


def sse_frame(version: int, body: bytes, retry_ms: int | None = None) -> bytes:
    """`id:` and `data:`; `retry:` first when given."""
    head = b"retry: %d\n" % retry_ms if retry_ms is not None else b""
    return head + b"id: %d\ndata: %s\n\n" % (version, body)


def chunk(data: bytes) -> bytes:
    """`data` as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def unchunk(data: bytes) -> bytes:
    """The payload of chunks made by `chunk` (one or more, back to back)."""
    parts = []
    while data:
        head, _, rest = data.partition(b"\r\n")
        size = int(head, 16)
        parts.append(rest[:size])
        data = rest[size + 2 :]
    return b"".join(parts)


PING_CHUNK = chunk(PING)
