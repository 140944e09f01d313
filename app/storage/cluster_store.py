"""Counts in a Redis Cluster (`REDIS_CLUSTER_URL`): the cluster's slots shard the polls.

The service sees one logical node, `cluster`: one buffer, one flusher queue, one journal
folder. A cluster script may touch one slot only, so the store splits every batch by slot and
sends the parts in one pipeline (redis-py groups them by master and follows MOVED, ASK and
TRYAGAIN while a slot migrates):
- a poll's keys share its hash tag, so they share a slot (the names of the sharded store);
- a flusher's mark is kept per slot, `flusher:{<tag>}:<id>:hwm`, where `<tag>` is a string
  that hashes to that slot: each slot's part of a batch is applied with its own mark in one
  atomic step, so a retried batch adds nothing where its part had landed;
- each part carries `prev`, the seq of the same flusher's last part for that slot earlier in
  the same list, so a part that failed is never overtaken there, or for the list's first
  part in that slot, the last seq this process had confirmed there, so a master that
  restarted empty refuses it and is reported as having lost data (cluster_marks.py);
- an Idempotency-Key's markers are kept per poll (`poll:{<id>}:once:<day>`), so in its slot.
A batch is confirmed when every part is stored and durable (app/storage/durability.py).
At start every master must keep an append-only file or have a replica connected
(`check_node`; persistence.py words the refusal).
Every command goes through `MasterPipelines` (one pipeline per master, each command's own
outcome; the slot map relearnt after a MOVED or a connection error, and every
`REFRESH_SECONDS`), so a failed master holds only its own slots' parts. A read returns the
slot's mark raised to the highest seq this process had confirmed before the read began
(all of it was stored then).
Keys move with their slot when an operator reshards (`MIGRATE` moves marks with counts).

Long because every store operation (batches, write-through, keyed and defined votes, reads,
options, claims) needs its own per-slot split and outcome mapping; the routing and the
durability wait are modules of their own (cluster_pipeline.py, durability.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Iterable
from functools import cache
from itertools import count
from typing import Any, TypeVar

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from app.core.nodes import NodeSpec, split_url
from app.storage.base import (
    Applied,
    Batch,
    Counts,
    MarksBehind,
    NodeMisconfigured,
    NodeUnavailable,
    Snapshot,
)
from app.storage.cluster_marks import SlotChains, by_slot, mark_places, slot_of
from app.storage.cluster_pipeline import (
    ClusterClient,
    MasterPipelines,
    NotDurable,
    NotSent,
    maybe_ran,
)
from app.storage.durability import DurabilityPolicy, weaker
from app.storage.idempotency import IDEMPOTENCY_TTL, claim_key, once_args
from app.storage.persistence import forgetful_masters
from app.storage.redis_store import (
    APPLY,
    APPLY_ONCE,
    READ,
    REGISTER,
    SAFE_EVICTION_POLICIES,
    aside_key,
    options_key,
    poll_key,
    script_args,
    set_aside,
    to_counts,
)

logger = logging.getLogger("app.cluster_store")

T = TypeVar("T")
LABEL = "cluster"  # the one logical node the service sees
# What the cluster client raises besides RedisError: no node for a slot, no reachable master,
# and (redis-py 8.1) AttributeError when ASK names a master it has not met yet.
CLIENT_ERRORS = (TimeoutError, RedisError, RedisClusterException, OSError, AttributeError)
OUTCOMES = {1: "applied", 2: "replayed", 3: "reused"}
REFRESH_SECONDS = 2.0  # the slot map is relearnt at least this often


@cache
def slot_tags() -> tuple[str, ...]:
    """For every slot, a short string that hashes to it (found once, about 0.3 s)."""
    tags: dict[int, str] = {}
    for n in count():
        tags.setdefault(key_slot(str(n).encode()), str(n))
        if len(tags) == REDIS_CLUSTER_HASH_SLOTS:
            return tuple(tags[slot] for slot in range(REDIS_CLUSTER_HASH_SLOTS))
    raise AssertionError("unreachable")


@cache
def sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


SCRIPTS = {sha(s): s for s in (APPLY, APPLY_ONCE, READ, REGISTER)}


def mark_key(slot: int, flusher_id: str) -> str:
    return f"flusher:{{{slot_tags()[slot]}}}:{flusher_id}:hwm"


class ClusterRedisStore:
    """The `Store` on a Redis Cluster; also the node clients the defined-poll store uses."""

    # A held list may take new batches: each master runs its own parts, and a part that
    # already landed is skipped by its slot's mark (app/services/flusher.py, `_take_more`).
    extends_held = True

    def __init__(
        self,
        spec: NodeSpec,
        timeout: float,
        tls_ca_file: str = "",
        seeds: list[NodeSpec] | None = None,
        durability: DurabilityPolicy | None = None,
        allow_forgetful: bool = False,
    ) -> None:
        self.spec = spec
        self.allow_forgetful = allow_forgetful  # a master with no AOF and no replica: warn only
        self.forgetful: dict[str, str] = {}  # LABEL -> why masters forget (accepted, /health)
        self.chains = SlotChains()  # each slot's parts chained to what it confirmed
        self.mark_places = mark_places  # where a batch's votes are kept (the loss ledger)
        options: dict[str, Any] = {}
        others = [split_url(seed.url) for seed in (seeds or [])[1:]]
        if others:  # the first seed's URL gives the options; any seed may answer first
            options["startup_nodes"] = [ClusterNode(u.host, int(u.port or 6379)) for u in others]
        if spec.tls and tls_ca_file:
            options["ssl_ca_certs"] = tls_ca_file
        # No retry after a timeout or a lost connection: a script sent before it may still
        # run, and a defined vote or a write-through add is not idempotent; our callers
        # retry what is safe to retry. MOVED, ASK and TRYAGAIN (the command did not run) are
        # still followed: redis-py handles them in a loop of their own.
        self.cluster = RedisCluster.from_url(
            spec.url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),
            **options,
        )
        self.confirmed: dict[str, int] = {}  # flusher id -> highest seq confirmed stored
        self.unchecked: set[str] = set()  # masters that did not answer `check_node` yet
        self.policy = durability or DurabilityPolicy()
        self.pipelines = MasterPipelines(self.cluster, self.policy, self._refresh)
        self._refresh_lock = asyncio.Lock()
        self._refreshed_at = 0.0
        self._refresher: asyncio.Task[None] | None = None

    # -- what the service and the defined-poll store ask of a store ------------------------

    @property
    def nodes(self) -> list[str]:
        return [LABEL]

    def node_for(self, poll_id: str) -> str:
        return LABEL

    def client(self, label: str) -> ClusterClient:
        return ClusterClient(self.pipelines)

    def served_via(self, poll_id: str) -> str:
        """The master serving the poll's slot as this client last learned it."""
        try:
            node = self.cluster.get_node_from_key(poll_key(poll_id))
        except (*CLIENT_ERRORS, IndexError):
            return LABEL
        return f"{LABEL} {node.name}" if node is not None else LABEL

    async def open(self) -> None:
        slot_tags()
        try:
            await self.cluster.initialize()
        except CLIENT_ERRORS as exc:  # start anyway; the flusher retries
            reason = type(exc).__name__
            logger.warning("cluster %s is not reachable yet: %s", self.spec.safe_url, reason)
        self._refresher = asyncio.create_task(self._refresh_often(), name="cluster slot map")

    async def _refresh_often(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            await self._refresh()

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self.cluster.aclose()

    async def call(self, node: str, operation: Awaitable[T]) -> T:
        """Run one cluster call; any failure becomes NodeUnavailable (password-free)."""
        try:
            return await operation
        except CLIENT_ERRORS as exc:
            if isinstance(exc, AttributeError):  # a master the slot map lacks: learn it anew
                await self._refresh()
            raise self._unavailable(exc) from exc

    async def _refresh(self) -> None:
        """Relearn the slot map; callers that asked while one was under way share it."""
        asked = time.monotonic()
        async with self._refresh_lock:
            if self._refreshed_at >= asked:
                return
            with contextlib.suppress(*CLIENT_ERRORS):  # the next call tries again
                await self.cluster.nodes_manager.initialize()
            self._refreshed_at = time.monotonic()

    def _unavailable(self, exc: BaseException) -> NodeUnavailable:
        said = isinstance(exc, ResponseError | NotDurable | NotSent)  # text without passwords
        reason = f"{type(exc).__name__}: {exc}" if said else ""
        return NodeUnavailable(
            LABEL, self.spec.safe_url, reason or type(exc).__name__, maybe_applied=maybe_ran(exc)
        )

    def _primaries(self) -> list[ClusterNode]:
        return list(self.cluster.get_primaries())

    async def check_node(self, node: str) -> None:
        """Every master must run `maxmemory-policy noeviction`, and keep an append-only file
        or have a replica connected (or ALLOW_NODES_WITHOUT_PERSISTENCE: a warning). A
        master that does not answer is checked once it does (`apply` asks it first), so the
        others' parts land meanwhile; NodeUnavailable only when no master answers."""
        if not self._primaries():
            await self.call(LABEL, self.cluster.initialize())
        self.unchecked.clear()
        silent = await self._check_masters(self._primaries())
        if silent and len(silent) == len(self._primaries()):
            raise silent[0]

    async def _check_masters(self, masters: list[ClusterNode]) -> list[NodeUnavailable]:
        """Check these masters; those that do not answer go to `unchecked` (their errors are
        returned). Raises NodeMisconfigured for one that answers and fails the check."""
        silent: list[NodeUnavailable] = []
        answered = []
        for master in masters:
            try:
                reply = await self.call(
                    LABEL, self.cluster.config_get("maxmemory-policy", target_nodes=master)
                )
            except NodeUnavailable as exc:
                if isinstance(exc.__cause__, ResponseError):  # CONFIG renamed or not allowed
                    logger.warning("cluster master %s: cannot read its eviction policy", master)
                    answered.append(master)
                    continue
                self.unchecked.add(master.name)
                silent.append(exc)
                continue
            policy = reply.get("maxmemory-policy", "noeviction")
            if policy not in SAFE_EVICTION_POLICIES:
                self.unchecked.add(master.name)
                raise NodeMisconfigured(
                    LABEL,
                    self.spec.safe_url,
                    f"master {master.name}: maxmemory-policy is {policy}, which can evict "
                    "counts; set maxmemory-policy noeviction",
                )
            answered.append(master)
        await self.learn_durability(answered)
        self.unchecked.difference_update(m.name for m in answered)
        self._check_forgetful()
        return silent

    async def _check_late_masters(self) -> None:
        """Before a batch: check the masters that did not answer the start-up check, if they
        answer now (one that still does not fails its own parts, as ever)."""
        late = [m for m in self._primaries() if m.name in self.unchecked]
        if late:
            await self._check_masters(late)

    def _check_forgetful(self) -> None:
        """From what `learn_durability` just read; a forgetful master refused, or said once."""
        names = [m.name for m in self._primaries() if m.name not in self.unchecked]
        reasons = forgetful_masters(self.pipelines.promises, names)
        if reasons and not self.allow_forgetful:
            raise NodeMisconfigured(LABEL, self.spec.safe_url, reasons[0])
        for reason in reasons:
            if reason not in self.forgetful.get(LABEL, ""):
                logger.warning("cluster %s", reason)
        if reasons:
            self.forgetful[LABEL] = "; ".join(reasons)
        else:
            self.forgetful.pop(LABEL, None)

    async def read(self, poll_id: str, flusher_ids: list[str]) -> Snapshot:
        slot = slot_of(poll_id)
        confirmed = {f: self.confirmed.get(f, 0) for f in flusher_ids}  # before the read
        keys = [poll_key(poll_id), aside_key(poll_id), *(mark_key(slot, f) for f in flusher_ids)]
        [reply] = await self._run([("EVALSHA", sha(READ), len(keys), *keys)])
        stored, aside, *marks = reply
        counts = to_counts(stored)
        for option_id, n in to_counts(aside).items():
            counts[option_id] = counts.get(option_id, 0) + n
        applied = {
            f: max(int(m or 0), confirmed[f]) for f, m in zip(flusher_ids, marks, strict=True)
        }
        return Snapshot(counts, applied, via=self.served_via(poll_id))

    async def _run(self, commands: Iterable[tuple[Any, ...]], durable: bool = False) -> list[Any]:
        """Commands in one pipeline per master (`_replies`). If any part failed:
        NodeUnavailable, which says "maybe applied" when any part ran or may have run."""
        return self._all_or_raise(await self._replies(commands, durable))

    async def _replies(self, commands: Iterable[tuple[Any, ...]], durable: bool) -> list[Any]:
        """Each command's reply or its exception. Scripts go by SHA; a master that does not
        know one (new, or restarted) gets them all, and only the commands it refused are
        sent again, so nothing runs twice."""
        todo = list(commands)
        replies = await self.pipelines.run(todo, durable)
        refused = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if refused:
            await self._load_scripts()
            again = await self.pipelines.run([todo[i] for i in refused], durable)
            for i, reply in zip(refused, again, strict=True):
                replies[i] = reply
        return replies

    def _all_or_raise(self, replies: list[Any]) -> list[Any]:
        failed = [reply for reply in replies if isinstance(reply, Exception)]
        if failed:
            error = self._unavailable(failed[0])
            error.maybe_applied = len(failed) < len(replies) or any(map(maybe_ran, failed))
            raise error from failed[0]
        return replies

    async def _load_scripts(self) -> None:
        """On every master that answers: one that does not fails its own commands anyway,
        and must not keep the scripts from the others."""
        for master in self._primaries():
            with contextlib.suppress(NodeUnavailable):
                for script in SCRIPTS.values():
                    load = self.cluster.execute_command(
                        "SCRIPT", "LOAD", script, target_nodes=master
                    )
                    await self.call(LABEL, load)

    async def apply(self, batches: list[Batch]) -> Applied:
        """Each slot's part chained as cluster_marks.py says; a slot found to have lost
        parts it confirmed raises MarksBehind (even when other parts failed)."""
        await self._check_late_masters()
        parts = self.chains.parts(batches)
        commands = []
        for p in parts:
            keys, args = script_args(p.counts)
            mark = mark_key(p.slot, p.flusher_id)
            commands.append(
                ("EVALSHA", sha(APPLY), len(keys) + 1, mark, *keys, p.seq, p.prev, *args)
            )
        replies = await self._replies(commands, durable=True)
        behind = self.chains.behind(parts, replies)
        if behind:
            raise MarksBehind(LABEL, self.spec.safe_url, {}, behind)
        self._all_or_raise(replies)
        if any(reply[0] != 1 for reply in replies):  # only after a failed earlier part
            raise NodeUnavailable(LABEL, self.spec.safe_url, "an earlier batch has not landed")
        self.chains.confirm(parts)
        for batch in batches:
            self.confirmed[batch.flusher_id] = max(
                self.confirmed.get(batch.flusher_id, 0), batch.seq
            )
        return Applied(set_aside(replies))

    async def apply_now(self, node: str, counts: Counts) -> Applied:
        """Write-through: all or nothing per slot (a bulk across slots is not atomic)."""
        commands = []
        for part in by_slot(counts).values():
            keys, args = script_args(part)
            commands.append(("EVALSHA", sha(APPLY), len(keys) + 1, keys[0], *keys, 0, 0, *args))
        return Applied(set_aside(await self._run(commands, durable=True)))

    async def apply_once(self, node: str, key: str, fingerprint: str, counts: Counts) -> str:
        """The sharded store's per-poll markers (`poll:{id}:once:<day>`, in the poll's slot),
        one script per slot; a slot where some polls have the marker sends the others again."""
        pending = by_slot(counts)
        outcomes: set[str] = set()
        while pending:
            slots = list(pending)
            commands = []
            for slot in slots:
                keys, args = once_args(key, fingerprint, pending[slot])
                commands.append(("EVALSHA", sha(APPLY_ONCE), len(keys), *keys, *args))
            again: dict[int, Counts] = {}
            for slot, reply in zip(slots, await self._run(commands, durable=True), strict=True):
                if reply[0] != 4:
                    outcomes.add(OUTCOMES[reply[0]])
                    continue
                outcomes.add("replayed")  # those polls had it; the others go again
                marked = {list(pending[slot])[int(i)] for i in reply[1:]}
                again[slot] = {p: c for p, c in pending[slot].items() if p not in marked}
            pending = again
        for outcome in ("reused", "applied"):  # a retry that lands the rest counts as applied
            if outcome in outcomes:
                return outcome
        return "replayed"

    async def claim(self, key: str, fingerprint: str) -> str:
        claim = ("SET", claim_key(key), fingerprint, "NX", "EX", IDEMPOTENCY_TTL)
        [claimed] = await self._run([claim])
        if claimed:
            return "claimed"
        [found] = await self._run([("GET", claim_key(key))])
        return "same" if found == fingerprint else "reused"

    async def register_options(
        self, wanted: dict[str, list[str]], cap: int
    ) -> dict[str, set[str] | None]:
        polls = list(wanted)
        replies = await self._run(
            ("EVALSHA", sha(REGISTER), 2, options_key(p), poll_key(p), cap, *wanted[p])
            for p in polls
        )
        return {
            poll_id: set(reply[1]) if reply[0] == 1 else None
            for poll_id, reply in zip(polls, replies, strict=True)
        }

    async def forget_marks(self, node: str, flusher_ids: list[str]) -> None:
        """Delete these flushers' marks in every slot (found by SCAN on every master)."""
        for master in self._primaries():
            for flusher_id in flusher_ids:
                pattern = f"flusher:*:{flusher_id}:hwm"
                cursor = 0
                while True:
                    scan = self.cluster.execute_command(
                        "SCAN", cursor, "MATCH", pattern, "COUNT", 1000, target_nodes=master
                    )
                    cursors, keys = await self.call(LABEL, scan)  # ({node: cursor}, keys)
                    cursor = int(cursors.get(master.name, 0))
                    await self._run(("DEL", key) for key in keys)
                    if cursor == 0:
                        break

    async def ping(self) -> dict[str, bool]:
        """Up when every master answers."""

        async def ping(master: ClusterNode) -> bool:
            try:
                return bool(await self.cluster.ping(target_nodes=master))
            except CLIENT_ERRORS:
                return False

        masters = self._primaries()
        if not masters:
            try:
                await self.cluster.initialize()
            except CLIENT_ERRORS:
                return {LABEL: False}
            masters = self._primaries()
        return {LABEL: all(await asyncio.gather(*(ping(m) for m in masters)))}

    def describe(self) -> list[tuple[str, str]]:
        return [(LABEL, self.spec.safe_url)]

    async def learn_durability(self, masters: list[ClusterNode] | None = None) -> None:
        """Ask every master (or these) what it can promise (at start); logs each weaker
        promise."""
        for master in self._primaries() if masters is None else masters:
            self.pipelines.promises.pop(master.name, None)  # asked afresh
            with contextlib.suppress(*CLIENT_ERRORS):
                found = await self.pipelines.promise(master)
                for why in weaker(found, self.policy):
                    logger.warning("cluster master %s: weaker durability: %s", master.name, why)

    def durability(self) -> dict[str, object]:
        """For /health: the policy, and per master what it promises and what it cannot."""
        masters = {m.name for m in self._primaries()}
        return {
            "wait_ms": self.policy.wait_ms,
            "min_replicas_acked": self.policy.min_replicas,
            "servers": {
                name: {
                    "replicas_connected": p.replicas,
                    "aof": p.aof,
                    "waitaof": p.waitaof,
                    "weaker": weaker(p, self.policy),
                }
                for name, p in sorted(self.pipelines.promises.items())
                if name in masters
            },
        }
