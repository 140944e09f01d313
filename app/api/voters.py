"""Who is voting: the `X-Voter-Id` header, or a signed cookie the service gives a browser.

The cookie holds a random id and an HMAC of it under `VOTER_SECRET`, so a voter cannot pick
another voter's id by editing it. What the node stores is a fixed-size hash of the identity
(16 characters however long the id), with the source in it, so a header id can never meet
a cookie id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from app.api.validation import ID_CHARS, ID_MAX

COOKIE = "voter"
HEADER = "x-voter-id"
COOKIE_MAX_AGE = 365 * 24 * 3600


class VoterCookies:
    def __init__(self, secret: bytes) -> None:
        self.secret = secret

    def _sign(self, voter_id: str) -> str:
        return hmac.new(self.secret, voter_id.encode(), hashlib.sha256).hexdigest()[:32]

    def new(self) -> str:
        """A fresh cookie value: `<id>.<signature>`."""
        voter_id = secrets.token_urlsafe(16)
        return f"{voter_id}.{self._sign(voter_id)}"

    def verified(self, value: str) -> str | None:
        voter_id, _, signature = value.partition(".")
        if voter_id and hmac.compare_digest(signature.encode(), self._sign(voter_id).encode()):
            return voter_id
        return None

    def set_cookie_header(self, value: str, secure: bool = False) -> str:
        """`Secure` when the page came over HTTPS (behind a proxy: uvicorn's proxy headers)."""
        flags = "; Secure" if secure else ""
        return f"{COOKIE}={value}; Path=/; Max-Age={COOKIE_MAX_AGE}; HttpOnly; SameSite=Lax{flags}"


def valid_header_id(value: str) -> bool:
    return 0 < len(value) <= ID_MAX and ID_CHARS.fullmatch(value) is not None


def cookie_value(cookie_header: str | None) -> str | None:
    """Our cookie's value from a `Cookie` header, if present."""
    for part in (cookie_header or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return None


def voter_key(source: str, voter_id: str) -> str:
    digest = hashlib.blake2b(f"{source}:{voter_id}".encode(), digest_size=12).digest()
    return base64.urlsafe_b64encode(digest).decode()


def cross_origin(origin: str | None, host: str | None) -> bool:
    """Whether a browser sent this request from another site's page (`Origin` names
    another host than the one asked): a vote by cookie from there is a forgery (CSRF).
    Clients that are not browsers send no `Origin` and are not affected."""
    if origin is None:
        return False
    _, _, origin_host = origin.partition("://")
    return origin == "null" or origin_host.lower() != (host or "").lower()
