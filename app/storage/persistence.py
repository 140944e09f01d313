"""Nodes that forget: a node with neither an append-only file nor a replica loses every
count and mark when its process restarts, so the service refuses it at start (and before
the first batch to a node that was down then), unless `ALLOW_NODES_WITHOUT_PERSISTENCE` is
set, when it warns once per node instead. What is read: `CONFIG GET appendonly` and
`INFO replication` (`connected_slaves`). RDB snapshots alone do not count: every vote since
the last snapshot is lost with the process."""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import ResponseError

logger = logging.getLogger("app.redis_store")


async def forgetful_reason(client: Any) -> str | None:
    """Why this node would forget its counts on a restart, or None if it keeps them (or
    cannot tell: CONFIG renamed or not allowed, which is logged)."""
    try:
        appendonly = (await client.config_get("appendonly")).get("appendonly", "no")
    except ResponseError as exc:
        logger.warning("cannot read the node's appendonly setting (%s); not checked", exc)
        return None
    if appendonly == "yes":
        return None
    replicas = int((await client.info("replication")).get("connected_slaves", 0))
    if replicas > 0:
        return None
    return (
        "it has neither an append-only file (appendonly no) nor a replica, so a restart "
        "loses every count it holds; set appendonly yes (or add a replica), or set "
        "ALLOW_NODES_WITHOUT_PERSISTENCE=true to accept that"
    )
