"""GRIP, the protocol Pushpin speaks with the service (docs/pushpin-and-cache.md).

- A request Pushpin forwards carries `Grip-Sig`: a JWT (HS256) signed with Pushpin's
  `sig_key`. Only a valid one makes a stream a GRIP stream; anything else streams directly.
- The answer holds the connection open (`Grip-Hold: stream`), subscribes it to the poll's
  channel, sends Pushpin's keep-alive comment every 15 s, and names a "next link" that
  Pushpin requests every so often per connection: that request renews the poll's watched
  lease, which is how the publisher knows somebody still watches.
- Publishing is an HTTP POST of items to each Pushpin's publish endpoint.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from dataclasses import dataclass

import httpx
import jwt

logger = logging.getLogger("app.grip")
RENEW_PARAMETER = "grip_renew"
PUBLISH_ATTEMPTS = 3


def verified(signature: str | None, key: str | None) -> bool:
    """True for a Grip-Sig signed with `key` that has not expired."""
    if not signature or not key:
        return False
    try:
        jwt.decode(signature, key, algorithms=["HS256"], options={"require": ["exp"]})
    except jwt.PyJWTError:
        return False
    return True


def channel(key: str) -> str:
    """The Pushpin channel of a poll's stream (`def:<id>` or `adhoc:<id>`)."""
    return "poll-" + key.replace(":", "-", 1)


def renew_token(grip_key: str, key: str) -> str:
    """The value of the next link's renew parameter for a poll's stream. Only Pushpin sees
    it (it strips `Grip-*` headers), so a request carrying it is Pushpin renewing a hold that
    the service granted, and one without it is a client's and gets every check."""
    return hmac.new(grip_key.encode(), b"renew " + key.encode(), hashlib.sha256).hexdigest()


def hold_headers(key: str, path: str, renew_seconds: int, token: str) -> list[tuple[bytes, bytes]]:
    """The answer to a GRIP stream request: hold, channel, keep-alive, next link."""
    link = f"<{path}?{RENEW_PARAMETER}={token}>; rel=next; timeout={renew_seconds}"
    return [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-store"),
        (b"grip-hold", b"stream"),
        (b"grip-channel", channel(key).encode()),
        (b"grip-keep-alive", b": ping\\n\\n; format=cstring; timeout=15"),
        (b"grip-link", link.encode()),
    ]


@dataclass(frozen=True)
class Event:
    key: str  # the poll's stream key
    version: int  # the same on every instance for the same state: the SSE id
    frame: bytes  # the whole SSE event
    final: bool  # the stream ends after it (a close action follows)


def items(event: Event) -> list[dict[str, object]]:
    """The publish items of one event; ids let Pushpin drop a repeat of a retried publish."""
    name = channel(event.key)
    found: list[dict[str, object]] = [
        {
            "channel": name,
            "id": str(event.version),
            "formats": {"http-stream": {"content": event.frame.decode()}},
        }
    ]
    if event.final:
        found.append(
            {
                "channel": name,
                "id": f"{event.version}-close",
                "formats": {"http-stream": {"action": "close"}},
            }
        )
    return found


class PushpinClient:
    """Publishes to every configured Pushpin instance."""

    def __init__(self, publish_urls: list[str], timeout: float = 5.0) -> None:
        self.urls = publish_urls
        self.publishes = 0  # events published (each one to every instance)
        self.failures = 0  # publish requests that failed after every attempt
        self._http = httpx.AsyncClient(timeout=timeout)

    async def _post(self, url: str, body: dict[str, object]) -> None:
        for attempt in range(PUBLISH_ATTEMPTS):
            try:
                reply = await self._http.post(url, json=body)
                if reply.status_code < 300:
                    return
                problem = f"{reply.status_code} {reply.text[:200]}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt + 1 < PUBLISH_ATTEMPTS:
                await asyncio.sleep(0.2 * (attempt + 1))
        self.failures += 1
        logger.warning("publish to %s failed: %s", url, problem)

    async def publish(self, event: Event) -> None:
        self.publishes += 1
        body: dict[str, object] = {"items": items(event)}
        await asyncio.gather(*(self._post(url, body) for url in self.urls))

    async def close(self) -> None:
        await self._http.aclose()
