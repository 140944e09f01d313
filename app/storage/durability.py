"""When a server may call a write durable: what it can promise, and the commands that ask it.

A write is durable once every replica the master reports connected (`ROLE`), and at least
`min_replicas`, acknowledged it (`WAIT`), and, where the server keeps an append-only file
and knows `WAITAOF` (valkey, Redis >= 7.2), once the master fsynced it (`WAITAOF 1 0`). The
three commands ride at the end of the pipeline that carried the writes, on the same
connection (WAIT and WAITAOF wait for that connection's writes), so the cost is paid once
per round trip, not per vote. A batch the server does not confirm in `wait_ms` stays held
by its caller and is confirmed by a later round trip's WAIT.

What a server cannot promise (no AOF, no WAITAOF, no replica) is said by `weaker()`, for
`/health` and the start-up log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DurabilityPolicy:
    wait_ms: int = 1000  # how long one WAIT / WAITAOF may block; 0: never asked (weaker)
    min_replicas: int = 0  # replicas that must acknowledge, even when fewer are connected


@dataclass
class ServerPromise:
    """What one server (a ring node, a cluster master) can promise, as last seen."""

    aof: bool = False
    waitaof: bool = False
    replicas: int = 0  # connected, by the last ROLE
    version: str = ""
    probed: bool = False
    extra: dict[str, str] = field(default_factory=dict)


def promise_from_info(info: dict[str, Any]) -> ServerPromise:
    """From `INFO` (all sections): persistence, version, connected replicas."""
    version = str(info.get("redis_version", "0"))
    parts = [int(p) if p.isdigit() else 0 for p in version.split(".")[:2]]
    major, minor = [*parts, 0, 0][:2]
    return ServerPromise(
        aof=str(info.get("aof_enabled", "0")) == "1",
        waitaof=(major, minor) >= (7, 2),
        replicas=int(info.get("connected_slaves", 0) or 0),
        version=str(info.get("valkey_version") or version),
        probed=True,
    )


def asks(promise: ServerPromise, policy: DurabilityPolicy) -> list[tuple[Any, ...]]:
    """The commands to append to a pipeline of writes; `judge` reads their replies."""
    if policy.wait_ms <= 0:
        return []
    wanted = max(promise.replicas, policy.min_replicas)
    commands: list[tuple[Any, ...]] = [("WAIT", wanted, policy.wait_ms)]
    if promise.aof and promise.waitaof:
        commands.append(("WAITAOF", 1, 0, policy.wait_ms))
    commands.append(("ROLE",))
    return commands


def judge(replies: list[Any], promise: ServerPromise, policy: DurabilityPolicy) -> str | None:
    """None when the writes before `asks()`'s commands are durable; else why not. Learns
    the replicas connected now (`ROLE`), for the next round trip's WAIT."""
    if policy.wait_ms <= 0:
        return None
    for reply in replies:
        if isinstance(reply, Exception):  # e.g. WAITAOF after `CONFIG SET appendonly no`
            promise.probed = False  # ask the server again what it promises
            return f"durability not confirmed: {type(reply).__name__}: {reply}"
    role = replies[-1]
    if not role or role[0] != "master":
        return "durability not confirmed: the server is no longer a master"
    connected = len(role[2]) if len(role) > 2 else 0
    asked = int(replies[0])
    promise.replicas = connected
    wanted = max(connected, policy.min_replicas)
    if asked < wanted:
        return (
            f"durability not confirmed: {asked} of {wanted} replicas acknowledged "
            f"in {policy.wait_ms} ms"
        )
    if len(replies) == 3 and int(replies[1][0]) < 1:
        return f"durability not confirmed: the AOF was not fsynced in {policy.wait_ms} ms"
    return None


def weaker(promise: ServerPromise, policy: DurabilityPolicy) -> list[str]:
    """What this server cannot promise, in words for /health and the log."""
    if not promise.probed:
        return ["not checked yet (the server has not answered)"]
    found = []
    if policy.wait_ms <= 0:
        found.append(
            "DURABLE_WAIT_SECONDS=0: writes count once the server ran them, not once durable"
        )
    if not promise.aof:
        found.append(
            "no AOF (appendonly no): a restart loses what no replica holds, a replica copies "
            "the master restarted empty if it is not promoted first, and a power loss of "
            "every node loses it all"
        )
    elif not promise.waitaof:
        found.append(
            f"no WAITAOF (server {promise.version} < 7.2): the local fsync of a write is "
            "not confirmed (appendfsync decides)"
        )
    if promise.replicas < 1 and policy.min_replicas < 1:
        found.append(
            "no replica connected: the loss of this server's host loses what its disk lacks "
            "(MIN_REPLICAS_ACKED=1 would hold batches instead)"
        )
    return found
