"""Commands to a Redis Cluster, sent by us as one pipeline per master, so each command's
result is what that command did, whatever happened to the other masters' pipelines.

redis-py's cluster pipeline fails all of its commands when one master cannot be reached,
and relearns the slot map only in a retry branch we cannot use (a retried script may run
twice). Here:
- a master that cannot be reached fails its own commands only: `NotSent` when the
  connection was never made (the command certainly did not run), the error itself when
  the command may have run;
- `MOVED` moves the slot to the master it names and sends the command again (it did
  not run); `ASK` sends
  it to the named master behind `ASKING`; `TRYAGAIN` and `CLUSTERDOWN` wait a little and
  send it again; a connection error relearns the slot map too (a failover may be under
  way), so the next call goes to the promoted replica;
- with `durable`, each master's pipeline ends with `WAIT` / `WAITAOF` / `ROLE`
  (app/storage/durability.py): a command that ran on a master that did not confirm it
  durable answers `NotDurable` (it ran; it may be lost with the master).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.storage.defined import READ_ONLY_SCRIPTS
from app.storage.durability import DurabilityPolicy, ServerPromise, asks, judge, promise_from_info
from app.storage.events import READ_ONLY_SCRIPTS as EVENT_READS
from app.storage.redis_store import reached_node

MAX_ROUNDS = 16  # sends of one command through redirections before giving up (as redis-py)
PAUSE_SECONDS = 0.05  # before sending again after TRYAGAIN / CLUSTERDOWN
LINK_ERRORS = (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError)
KEYLESS = {"WAIT", "WAITAOF", "ROLE", "INFO", "PING", "SCRIPT", "ASKING"}
PROBE_MS = 1000  # how long a durability probe's key lives


def probe_key(args: Sequence[Any]) -> str | None:
    """A key in the same slot as the command's, for the write that lets WAIT cover what
    other connections wrote before (None if no such key is found)."""
    name = str(args[0]).upper()
    key = args[3] if name in ("EVAL", "EVALSHA") else args[1]
    text = key.decode() if isinstance(key, bytes) else str(key)
    start = text.find("{")
    end = text.find("}", start + 1) if start >= 0 else -1
    tag = text[start + 1 : end] if end > start + 1 else text
    probe = f"durable:{{{tag}}}"
    return probe if key_slot(probe.encode()) == key_slot(text.encode()) else None


class NotSent(RedisError):
    """The command certainly never ran: no master for its slot, or no connection made."""


class NotDurable(RedisError):
    """The command ran on its master, which did not confirm it durable (see durability)."""


def maybe_ran(exc: BaseException) -> bool:
    """False only when the command certainly never ran."""
    if isinstance(exc, NotSent | MovedError | AskError | TryAgainError | ClusterDownError):
        return False
    return reached_node(exc)


def command_slot(args: Sequence[Any]) -> int:
    """The slot of a command's first key (EVAL/EVALSHA: after the key count)."""
    name = str(args[0]).upper()
    if name in ("EVAL", "EVALSHA"):
        if int(args[2]) < 1:
            raise NotSent(f"{name} without keys cannot be routed")
        key = args[3]
    else:
        key = args[1]
    return key_slot(key.encode() if isinstance(key, str) else key)


async def drop_closed_links(node: ClusterNode) -> None:
    """Close the idle connections the server already closed (a killed master's), so the
    next send opens a new one: refused, the command is `NotSent` for certain; on the old
    one it would be written to a dead peer and end "maybe ran"."""
    for connection in list(getattr(node, "_free", ())):
        reader = getattr(connection, "_reader", None)
        if reader is not None and reader.at_eof():
            await connection.disconnect()


class MasterPipelines:
    def __init__(
        self,
        cluster: RedisCluster,
        policy: DurabilityPolicy,
        refresh: Callable[[], Awaitable[None]],
    ) -> None:
        self.cluster = cluster
        self.policy = policy
        self.refresh = refresh
        self.promises: dict[str, ServerPromise] = {}  # master name -> what it promises

    def master_for(self, args: Sequence[Any]) -> ClusterNode:
        try:
            node = self.cluster.nodes_manager.get_node_from_slot(command_slot(args))
        except (SlotNotCoveredError, IndexError, KeyError) as exc:
            raise NotSent(f"no master known for the command's slot ({exc})") from exc
        if node is None:
            raise NotSent("no master known for the command's slot")
        return node

    def _node_at(self, host: str, port: int) -> ClusterNode:
        """The node an ASK names, even one the slot map has not shown us yet."""
        manager = self.cluster.nodes_manager
        name = f"{host}:{port}"
        node = manager.nodes_cache.get(name)
        if node is None:
            node = ClusterNode(host, port, **manager.connection_kwargs)
            manager.nodes_cache[name] = node
        return node

    async def promise(self, node: ClusterNode) -> ServerPromise:
        known = self.promises.get(node.name)
        if known is not None and known.probed:
            return known
        info = await node.execute_command("INFO")
        found = promise_from_info(info if isinstance(info, dict) else {})
        self.promises[node.name] = found
        return found

    async def run(self, commands: Sequence[tuple[Any, ...]], durable: bool) -> list[Any]:
        """Each command's reply, or the exception it ended with (never raised)."""
        if not self.cluster.nodes_manager.slots_cache:
            await self.refresh()
        results: list[Any] = [None] * len(commands)
        todo: list[tuple[int, ClusterNode | None]] = [(i, None) for i in range(len(commands))]
        for _ in range(MAX_ROUNDS):
            groups = self._group(todo, commands, results)
            sent = await asyncio.gather(
                *(self._send(node, items, commands, durable) for node, items in groups.values())
            )
            todo, relearn, pause = self._sort_replies(sent, results)
            for i, _ in todo:  # a MOVED names the slot's master: learn it at once
                if isinstance(results[i], MovedError):
                    await self.cluster.nodes_manager.move_slot(results[i])
            if relearn:
                await self.refresh()
            if not todo:
                break
            if pause:
                await asyncio.sleep(PAUSE_SECONDS)
        for i, _ in todo:  # still redirected: it never ran
            results[i] = NotSent(f"still redirected after {MAX_ROUNDS} sends: {results[i]}")
        return results

    def _group(
        self,
        todo: list[tuple[int, ClusterNode | None]],
        commands: Sequence[tuple[Any, ...]],
        results: list[Any],
    ) -> dict[str, tuple[ClusterNode, list[tuple[int, bool]]]]:
        """The commands to send by master (the one an ASK named, or the slot's)."""
        groups: dict[str, tuple[ClusterNode, list[tuple[int, bool]]]] = {}
        for i, asked in todo:
            try:
                node = asked or self.master_for(commands[i])
            except NotSent as exc:
                results[i] = exc
                continue
            groups.setdefault(node.name, (node, []))[1].append((i, asked is not None))
        return groups

    def _sort_replies(
        self, sent: list[dict[int, Any]], results: list[Any]
    ) -> tuple[list[tuple[int, ClusterNode | None]], bool, bool]:
        """Record the replies; returns what to send again (and where), whether to relearn
        the slot map, whether to pause first."""
        todo: list[tuple[int, ClusterNode | None]] = []
        relearn = pause = False
        for replies in sent:
            for i, reply in replies.items():
                results[i] = reply
                if isinstance(reply, AskError):
                    todo.append((i, self._node_at(reply.host, int(reply.port))))
                elif isinstance(reply, MovedError):
                    todo.append((i, None))
                elif isinstance(reply, TryAgainError | ClusterDownError):
                    pause = True
                    todo.append((i, None))
                elif isinstance(reply, (*LINK_ERRORS, NotSent)):
                    relearn = True
        return todo, relearn, pause

    def _add_waits(
        self,
        stack: list[PipelineCommand],
        items: list[tuple[int, bool]],
        commands: Sequence[tuple[Any, ...]],
        promise: ServerPromise,
    ) -> tuple[int | None, int]:
        """Append the probe and the durability asks; their places in the stack.

        WAIT covers this connection's writes only. A reply that wrote nothing (a voter
        found, a key replayed) vouches for a write made on another connection, perhaps by
        another instance: one small write of our own puts this WAIT behind everything the
        master ran before it."""
        waits = asks(promise, self.policy)
        probe = None
        key = probe_key(commands[items[0][0]]) if waits and items else None
        if key is not None:
            if items[0][1]:
                stack.append(PipelineCommand(len(stack), "ASKING"))
            probe = len(stack)
            stack.append(PipelineCommand(len(stack), "SET", key, "1", "PX", PROBE_MS))
        tail = len(stack)
        for args in waits:
            stack.append(PipelineCommand(len(stack), *args))
        return probe, tail

    async def _send(
        self,
        node: ClusterNode,
        items: list[tuple[int, bool]],
        commands: Sequence[tuple[Any, ...]],
        durable: bool,
    ) -> dict[int, Any]:
        """One pipeline to one master; its commands' replies by index."""
        stack: list[PipelineCommand] = []
        where: dict[int, int] = {}
        for i, asking in items:
            if asking:
                stack.append(PipelineCommand(len(stack), "ASKING"))
            where[i] = len(stack)
            stack.append(PipelineCommand(len(stack), *commands[i]))
        tail = len(stack)
        promise = None
        try:
            if durable:
                promise = await self.promise(node)
        except (*LINK_ERRORS, RedisError, RedisClusterException) as exc:  # nothing sent yet
            refused = NotSent(f"{node.name}: {type(exc).__name__}: {exc}")
            return dict.fromkeys(where, refused)
        probe = None
        if promise is not None:
            probe, tail = self._add_waits(stack, items, commands, promise)
        await drop_closed_links(node)
        try:
            await node.execute_pipeline(stack)
        except (*LINK_ERRORS, RedisError, RedisClusterException) as exc:  # raised before replies
            failed: BaseException = exc
            if not maybe_ran(exc):
                failed = NotSent(f"{node.name}: {type(exc).__name__}: {exc}")
            return dict.fromkeys(where, failed)
        replies = {i: stack[j].result for i, j in where.items()}
        if promise is not None:
            reason = judge([c.result for c in stack[tail:]], promise, self.policy)
            probed = stack[probe].result if probe is not None else None
            # A probe redirected (its slot migrating) leaves this WAIT to cover this
            # connection's own writes, as without a probe; any other failure: not durable.
            redirected = isinstance(probed, MovedError | AskError | TryAgainError)
            if isinstance(probed, Exception) and not redirected:
                reason = f"durability not confirmed: the probe failed: {probed}"
            if reason is not None:
                for i, reply in replies.items():
                    if not isinstance(reply, Exception):
                        replies[i] = NotDurable(f"{node.name}: {reason}")
        return replies


class ClusterClient:
    """What the defined-poll store asks of a node client (`eval`, `lrange`, `pipeline`),
    sent through `MasterPipelines`: writes wait until durable (see durability)."""

    def __init__(self, pipelines: MasterPipelines) -> None:
        self.pipelines = pipelines

    async def _one(self, args: tuple[Any, ...], durable: bool) -> Any:
        [reply] = await self.pipelines.run([args], durable)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> Any:
        durable = script not in READ_ONLY_SCRIPTS + EVENT_READS  # a read waits for nothing
        return await self._one(("EVAL", script, numkeys, *keys_and_args), durable)

    async def lrange(self, key: str, start: int, end: int) -> Any:
        return await self._one(("LRANGE", key, start, end), durable=False)

    def pipeline(self, transaction: bool = False) -> ClusterClientPipeline:
        return ClusterClientPipeline(self.pipelines)


class ClusterClientPipeline:
    def __init__(self, pipelines: MasterPipelines) -> None:
        self.pipelines = pipelines
        self.commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any) -> None:
        self.commands.append(args)

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        replies = await self.pipelines.run(self.commands, durable=True)
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, BaseException):
                    raise reply
        return replies
