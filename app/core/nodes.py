"""Parsing of `REDIS_NODES` entries: `url` or `label=url`. Nobody else parses node URLs.

Passwords never leave this module in the clear: `NodeSpec.safe_url` shows `user:***@host` or
`***@host`, and errors name an entry by its position, never by its text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

LABEL_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
SCHEMES = ("redis", "rediss")


@dataclass(frozen=True)
class NodeURL:
    """A node URL split our way: the userinfo is everything before the last `@`, so a
    password may hold `/ # ? = @ :`, and `%` is taken literally."""

    scheme: str
    userinfo: str | None
    host: str
    port: str  # as written after the host's `:`; empty when there is none
    rest: str  # path, query and fragment

    @property
    def problem(self) -> str | None:
        """What is wrong with the URL, in words that quote none of it; None if nothing."""
        if self.scheme.lower() not in SCHEMES:
            return "the URL must start with redis:// or rediss://"
        if self.host in ("", "[]"):
            return "the URL has no host"
        if self.port and not (self.port.isascii() and self.port.isdigit()):
            return "the URL's port is not a number"
        if self.port and int(self.port) > 65535:
            return "the URL's port is over 65535"
        return None

    def _join(self, auth: str, rest: str) -> str:
        port = f":{self.port}" if self.port else ""
        return f"{self.scheme.lower()}://{auth}{self.host}{port}{rest}"

    @property
    def for_redis(self) -> str:
        """The URL for redis-py, which percent-decodes the userinfo: so encode it here."""
        if self.userinfo is None:
            return self._join("", self.rest)
        user, colon, password = self.userinfo.partition(":")
        auth = quote(user, safe="") + (":" + quote(password, safe="") if colon else "")
        return self._join(auth + "@", self.rest)

    @property
    def redacted(self) -> str:
        """The URL with the password (or a userinfo that may be one) and any query hidden."""
        auth = ""
        if self.userinfo is not None:
            user, colon, _ = self.userinfo.partition(":")
            auth = f"{user}:***@" if colon else "***@"  # a lone userinfo may be a password
        cut = min((i for c in "?#" if (i := self.rest.find(c)) >= 0), default=len(self.rest))
        hidden = self.rest[cut] + "***" if cut < len(self.rest) else ""  # `?password=...`
        return self._join(auth, self.rest[:cut] + hidden)


def split_url(url: str) -> NodeURL:
    """Split without validating; `NodeURL.problem` says what is wrong, if anything."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo: str | None
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        userinfo = None
    cut = min((i for c in "/?#" if (i := hostpart.find(c)) >= 0), default=len(hostpart))
    authority, tail = hostpart[:cut], hostpart[cut:]
    if authority.startswith("["):  # IPv6: [::1]:6379
        host, _, after = authority.partition("]")
        host += "]"
        port = after[1:] if after.startswith(":") else after  # junk fails the port check
    else:
        host, _, port = authority.partition(":")
    return NodeURL(scheme, userinfo, host, port, tail)


def redact_url(url: str) -> str:
    """`url` with its password hidden, for logs, health output and errors."""
    return split_url(url).redacted


@dataclass(frozen=True)
class NodeSpec:
    """One Redis node: the label `served_via` reports and the URL to connect to (which may
    hold a password, so it is left out of `repr`)."""

    label: str
    url: str

    def __repr__(self) -> str:
        return f"NodeSpec(label={self.label!r}, safe_url={self.safe_url!r})"

    @property
    def tls(self) -> bool:
        return self.url.startswith("rediss://")

    @property
    def safe_url(self) -> str:
        """The URL with any password replaced by `***`, for logs, health output and errors."""
        return redact_url(self.url)


LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})


def server_identity(url: str) -> str:
    """The server a node URL names, for comparing recorded URLs with configured ones: no
    user or password, the host in lower case, the loopback names (`localhost`, `127.0.0.1`,
    `[::1]`) as one, and the default port 6379 written out. Two URLs with the same identity
    are the same server (a user writes either `localhost` or `127.0.0.1`; a local server
    listens on both; a password set later does not make it another server)."""
    node_url = split_url(url)
    host = node_url.host.lower()
    if host in LOOPBACK_HOSTS:
        host = "127.0.0.1"
    port = node_url.port or "6379"
    return NodeURL(node_url.scheme, None, host, port, node_url.rest).redacted


def split_entry(entry: str) -> tuple[str | None, str]:
    """`label=url` or `url`: there is a label only if no `://` comes before the first `=`,
    so an unlabelled URL may have `=` in its password."""
    label, sep, url = entry.partition("=")
    if not sep or "://" in label:
        return None, entry
    return label.strip(), url.strip()


def parse_nodes(raw: str) -> list[NodeSpec]:
    """Parse a comma-separated `REDIS_NODES` value. Empty means no nodes (in-memory store).

    Without explicit labels a single node is `redis` and several are `redis_<port>`.
    """
    entries = [e.strip() for e in raw.split(",") if e.strip()]
    parsed: list[tuple[str | None, NodeURL]] = []
    for position, entry in enumerate(entries, 1):
        where = f"REDIS_NODES entry {position}"
        label, url = split_entry(entry)
        if label is not None and not LABEL_PATTERN.match(label):
            raise ValueError(
                f"{where}: the label before '=' must be 1-64 letters, digits, '-', '_' or '.'"
            )
        node_url = split_url(url)
        if node_url.problem:
            raise ValueError(f"{where}: {node_url.problem}")
        parsed.append((label, node_url))

    nodes: list[NodeSpec] = []
    for label, node_url in parsed:
        default = "redis" if len(parsed) == 1 else f"redis_{int(node_url.port or 6379)}"
        nodes.append(NodeSpec(label or default, node_url.for_redis))
    labels = [n.label for n in nodes]
    duplicates = sorted({lb for lb in labels if labels.count(lb) > 1})
    if duplicates:
        raise ValueError(
            f"node labels must be unique, {duplicates} repeats; give each node a label: label=url"
        )
    return nodes


def parse_cluster_url(raw: str) -> NodeSpec:
    """`REDIS_CLUSTER_URL`: one master's URL, database 0, nothing after the port."""
    url = split_url(raw.strip())
    if url.problem:
        raise ValueError(url.problem)
    if url.rest not in ("", "/", "/0"):
        raise ValueError("the URL takes no database, path or query: a cluster has database 0 only")
    return NodeSpec("cluster", url.for_redis)
