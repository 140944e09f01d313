"""Parsing of `REDIS_NODES` entries: `url` or `label=url`. Nobody else parses node URLs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

LABEL_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
SCHEMES = ("redis", "rediss")


@dataclass(frozen=True)
class NodeSpec:
    """One Redis node: the label `served_via` reports and the URL to connect to."""

    label: str
    url: str

    @property
    def tls(self) -> bool:
        return self.url.startswith("rediss://")

    @property
    def safe_url(self) -> str:
        """The URL with any password replaced by `***`, for logs, health output and errors."""
        return redact_url(self.url)


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"node URL {redact_url(url)!r} must start with redis:// or rediss://")
    if not parts.hostname:
        raise ValueError(f"node URL {redact_url(url)!r} has no host")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError(f"node URL {redact_url(url)!r} has an invalid port") from None


def parse_nodes(raw: str) -> list[NodeSpec]:
    """Parse a comma-separated `REDIS_NODES` value. Empty means no nodes (in-memory store).

    Without explicit labels a single node is `redis` and several are `redis_<port>`.
    """
    entries = [e.strip() for e in raw.split(",") if e.strip()]
    labelled: list[tuple[str | None, str]] = []
    for entry in entries:
        label, sep, url = entry.partition("=")
        if not sep:
            label, url = "", entry
        label, url = label.strip(), url.strip()
        _check_url(url)
        if sep and not LABEL_PATTERN.match(label):
            raise ValueError(f"node label {label!r} must be 1-64 letters, digits, '-', '_' or '.'")
        labelled.append((label or None, url))

    nodes: list[NodeSpec] = []
    for given, url in labelled:
        default = "redis" if len(labelled) == 1 else f"redis_{urlsplit(url).port or 6379}"
        nodes.append(NodeSpec(given or default, url))
    labels = [n.label for n in nodes]
    duplicates = sorted({lb for lb in labels if labels.count(lb) > 1})
    if duplicates:
        raise ValueError(
            f"node labels must be unique, {duplicates} repeats; give each node a label: label=url"
        )
    return nodes
