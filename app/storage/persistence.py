"""Nodes that forget: a node without an append-only file loses every count and mark when
its process restarts, so the service refuses it at start (and before the first batch to a
node that was down then), unless `ALLOW_NODES_WITHOUT_PERSISTENCE` is set, when it warns
once per node instead. What is read: `CONFIG GET appendonly`. RDB snapshots alone do not
count: every vote since the last snapshot is lost with the process. Nor does a replica: the
ring store promotes none, and a node restarted empty is copied to its replicas, which then
hold nothing either (`tests/test_forgetful_nodes.py`).

A Redis Cluster master counts as keeping its counts with an append-only file or with a
replica connected (its replica is promoted when it dies); with neither it is refused the
same way (`forgetful_masters`, read from INFO by app/storage/cluster_store.py,
`tests/test_cluster_forgetful_masters.py`)."""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import ResponseError

from app.storage.durability import ServerPromise

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


def forgetful_masters(promises: dict[str, ServerPromise], masters: list[str]) -> list[str]:
    """Why each cluster master with no append-only file and no replica connected (by what
    it last said in INFO: `promises`) would forget its counts on a restart."""
    reasons = []
    for master in masters:
        found = promises.get(master)
        if found is None or not found.probed:
            logger.warning("cluster master %s: cannot read its persistence; not checked", master)
        elif not found.aof and found.replicas < 1:
            reasons.append(
                f"master {master}: it has no append-only file (appendonly no) and no replica "
                "connected, so a restart loses every count it holds; set appendonly yes or "
                "give it a replica, or set ALLOW_NODES_WITHOUT_PERSISTENCE=true to accept that"
            )
    return reasons
