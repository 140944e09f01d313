"""Nodes that forget: a node without an append-only file loses every count and mark when
its process restarts, so the service refuses it at start (and before the first batch to a
node that was down then), unless `ALLOW_NODES_WITHOUT_PERSISTENCE` is set, when it warns
once per node instead. What is read: `CONFIG GET appendonly`. RDB snapshots alone do not
count: every vote since the last snapshot is lost with the process. Nor does a replica: the
ring store promotes none, and a node restarted empty is copied to its replicas, which then
hold nothing either (`tests/test_forgetful_nodes.py`)."""

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
    return (
        "it has no append-only file (appendonly no), so a restart loses every count it "
        "holds, and a replica of it then copies the empty restart (nothing promotes one); "
        "set appendonly yes, or set ALLOW_NODES_WITHOUT_PERSISTENCE=true to accept that"
    )
