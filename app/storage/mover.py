"""The mover: finds what the ring puts on another node and moves it there, several polls per
round trip, each by its own crash-safe protocol:
- ad-hoc counts and options: STAGE / COPY / RELEASE (app/storage/moves.py);
- a poll's Idempotency-Key markers: read by STAGE, then PUT / DROP
  (app/storage/idempotency.py);
- defined polls: STAGE+DUMP / RESTORE+COMMIT / RELEASE (app/storage/defined_moves.py);
- claims `idem:{<key>}`: TAKE / PUT / DROP, with their TTL.

A group of polls moves off one source in three pipelines, each one node call: stage on the
source, copy on each target (sorted), release on the source. Every command in them is one
atomic script or idempotent, and a release is sent only once every copy has been confirmed,
so whatever prefix of a pipeline a crash lets through, the next run finishes the same
transfers (docs/design.md, "Changing the ring").

Long because the scan, the group move and its three pipelines share one batching of polls
per round trip; each protocol's scripts live in their own modules (named above).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.client import NEVER_DECODE
from redis.commands.core import AsyncScript

from app.core.consistent_hash import HashRing
from app.core.nodes import server_identity
from app.core.redis_manager import RedisManager
from app.storage import defined_moves as dm
from app.storage import idempotency as idem
from app.storage.base import NodeUnavailable
from app.storage.moves import (
    COPY,
    MOVING_KEY,
    RELEASE,
    RING_KEY,
    SCAN_COUNT,
    STAGE,
    Record,
    marker_key,
    poll_of,
    record_key,
    ring_config,
)
from app.storage.redis_store import aside_key, options_key, poll_key
from app.storage.ring_lease import SERVED_KEY, SETTLE, digest

logger = logging.getLogger("app.rebalance")

T = TypeVar("T")
GROUP = 100  # polls (or claims) moved per round trip by a scan
PROGRESS_SECONDS = 1.0  # a progress line at most this often (none for a scan this short)
Command = tuple[Any, ...]  # ("sadd" | "eval" | "restore", arguments...)
Guard = Callable[[list[str]], AbstractAsyncContextManager[list[str]]]
# SCAN patterns and what a match is (`Mover.scan` says in which order they are passed).
PATTERNS = (
    ("move:*", "adhoc"),
    ("poll:*", "adhoc"),
    ("dmove:*", "defined"),
    ("def:*", "defined"),
    ("idem:*", "claim"),
)
RECORD_PATTERNS = ("move:*", "dmove:*")


@asynccontextmanager
async def unguarded(names: list[str]) -> AsyncIterator[list[str]]:
    yield names


SAMPLE = 20  # poll ids kept per (source, target), for the dry run's listing


@dataclass
class Report:
    """What a scan found (dry run) or did: counters, and a few poll ids per (source, target),
    so its size does not grow with the number of polls."""

    polls: int = 0  # polls with live keys seen (one on two nodes counts on each)
    moves: dict[tuple[str, str], int] = field(default_factory=dict)  # polls per (source, target)
    sample: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # first SAMPLE ids
    staged: int = 0  # records of moves staged earlier found (resumed, or listed by a dry run)
    votes: int = 0
    claims: int = 0
    scanned: int = 0  # keys

    @property
    def moved(self) -> int:
        return sum(self.moves.values())

    def add(self, source: str, target: str, poll_id: str) -> None:
        pair = (source, target)
        self.moves[pair] = self.moves.get(pair, 0) + 1
        ids = self.sample.setdefault(pair, [])
        if len(ids) < SAMPLE:
            ids.append(poll_id)


@dataclass
class Staged:
    """What the stage call found for one poll on the source."""

    poll_id: str
    adhoc: Record | None = None
    markers: list[str | int] = field(default_factory=list)  # MARKERS_PUT's ARGV
    day: int = 0  # the day the marker keys were named from (the same keys are written)
    defined: dict[str, str] | None = None
    dumps: dict[int, bytes] = field(default_factory=dict)  # part index -> DUMP payload

    @property
    def anything(self) -> bool:
        return self.adhoc is not None or self.defined is not None or bool(self.markers)


def recorded_nodes(recorded: list[str]) -> set[tuple[str, str]]:
    """(label, password-free URL) of every node that these `ring_config` JSON values name."""
    found: set[tuple[str, str]] = set()
    for value in recorded:
        try:
            found |= {(str(k), str(v)) for k, v in dict(json.loads(value)["nodes"]).items()}
        except (ValueError, KeyError, TypeError):
            logger.warning("rebalance: unreadable ring record %r; ignored", value)
    return found


class Mover:
    """Finds the polls whose owner changed and moves them, many per round trip."""

    def __init__(
        self,
        manager: RedisManager,
        call: Callable[[str, Awaitable[Any]], Any],
        group: int = GROUP,
    ) -> None:
        self.manager = manager
        self.call = call  # the store's node call: failures become NodeUnavailable
        self.group = group  # polls (or claims) per round trip in a scan
        self.report = Report()  # the running (or last) scan's
        self._passed: set[tuple[str, str]] = set()
        # The ring every poll was on before this change, when that is known for sure (see
        # `narrow`): first touches then look at a poll's owner under it only.
        self.previous: HashRing | None = None
        self._previous_labels: dict[str, str] = {}  # its labels -> this start's, by server
        self._scripts: dict[str, AsyncScript] = {}

    def _eval(self, pipe: Any, source: str, numkeys: int, *keys_and_args: Any) -> None:
        """EVALSHA in the pipeline; the pipeline loads the script first if the node lacks
        it (one SCRIPT EXISTS per pipeline): a script body is sent once, not per poll."""
        script = self._scripts.get(source)
        if script is None:
            any_client = self.client(next(iter(self.manager.specs)))
            script = self._scripts[source] = any_client.register_script(source)
        pipe.scripts.add(script)
        pipe.evalsha(script.sha, numkeys, *keys_and_args)

    def _queue(self, pipe: Any, command: Command) -> None:
        kind, args = command[0], command[1:]
        if kind == "sadd":
            pipe.sadd(*args)
        elif kind == "restore":
            pipe.restore(args[0], 0, args[1], replace=True)
        else:
            self._eval(pipe, *args)

    @property
    def sources(self) -> list[str]:
        return [*self.manager.specs, *self.manager.retiring]

    def client(self, node: str) -> Redis:
        return self.manager.client(node)

    async def run(self, node: str, step: str, operation: Awaitable[T]) -> T:
        """One node call; the seam the crash tests break."""
        result: T = await self.call(node, operation)
        return result

    async def recorded(self) -> dict[str, str | NodeUnavailable | None]:
        """Each node's `ring:config` (ring and retiring nodes), or why it could not be read."""
        found: dict[str, str | NodeUnavailable | None] = {}
        for node in self.sources:
            try:
                value = await self.run(node, "read ring", self.client(node).get(RING_KEY))
            except NodeUnavailable as exc:
                found[node] = exc
                continue
            found[node] = None if value is None else str(value)
        return found

    async def record(self) -> None:
        """Record the ring on its nodes, then clear the cut-off-move markers everywhere (a
        crash between leaves a marker: the next start scans once more)."""
        config = ring_config(self.manager)
        for node in self.manager.specs:
            await self.run(node, "write ring", self.client(node).set(RING_KEY, config))
        for node in self.manager.specs:  # only this ring has served since: no split to find
            settle = self.client(node).eval(SETTLE, 1, SERVED_KEY, digest(config))
            await self.run(node, "settle ring", settle)
        for node in self.manager.retiring:  # left empty
            await self.run(node, "settle ring", self.client(node).delete(SERVED_KEY))
        for node in self.sources:
            await self.run(node, "write ring", self.client(node).delete(MOVING_KEY))

    async def cut_off(self) -> dict[str, str | NodeUnavailable]:
        """The `ring:moving` markers (a move staged there may be unfinished) by node, or why
        a node's could not be read (the caller counts that node as down)."""
        found: dict[str, str | NodeUnavailable] = {}
        for node in self.sources:
            try:
                value = await self.run(node, "read ring", self.client(node).get(MOVING_KEY))
            except NodeUnavailable as exc:
                found[node] = exc
                continue
            if value is not None:
                found[node] = str(value)
        return found

    def unnamed(self, recorded: list[str]) -> list[str]:
        """The nodes that the recorded rings and `ring:moving` markers name (JSON values of
        `ring_config`) whose server (URL) this start does not have: polls may be left there,
        so a start must not go on without them (each is described, password-free)."""
        specs = [*self.manager.specs.values(), *self.manager.retiring.values()]
        servers = {server_identity(spec.safe_url) for spec in specs}
        # A server this start has, under any label, is scanned: a label that changed (one
        # unlabelled node is `redis`, two are `redis_<port>`) hides nothing; nor does a URL
        # written another way (`localhost` for `127.0.0.1`: `server_identity`).
        named = recorded_nodes(recorded)
        return sorted(
            {f"{label}={url}" for label, url in named if server_identity(url) not in servers}
        )

    def renamed(self, recorded: list[str]) -> dict[str, str]:
        """Recorded labels that this start has under another label (same URL): old -> new.
        A journal batch sealed for the old label goes to the same server, where its mark is."""
        specs = [*self.manager.specs.items(), *self.manager.retiring.items()]
        labels = {server_identity(spec.safe_url): label for label, spec in specs}
        found = {(label, server_identity(url)) for label, url in recorded_nodes(recorded)}
        return {
            label: labels[server]
            for label, server in found
            if server in labels and labels[server] != label and label not in self.sources
        }

    # -- polls -----------------------------------------------------------------------------

    async def move_poll(self, source: str, poll_id: str) -> int:
        """Move one poll's keys off `source` (ad-hoc and defined); returns the votes moved."""
        return await self.move_group(source, [poll_id])

    def narrow(self, recorded: str) -> None:
        """The polls were all on this recorded ring (`ring_config`'s JSON): a first touch
        looks for a poll on its owner under it only, not on every node. Only for a ring
        recorded alike on every node that has one, with no cut-off move (`ring:moving`) and
        no recovered batch sent elsewhere: the caller checks. The old ring places polls by
        its own labels; each is mapped to this start's label of the same server (one node
        `redis` becomes `redis_<port>` when a second joins), so the lookup names a node
        this start has."""
        config = json.loads(recorded)
        self.previous = HashRing(sorted(config["nodes"]), int(config["virtual_nodes"]))
        specs = [*self.manager.specs.items(), *self.manager.retiring.items()]
        labels = {server_identity(spec.safe_url): label for label, spec in specs}
        self._previous_labels = {
            old: labels[server_identity(str(url))]
            for old, url in dict(config["nodes"]).items()
            if server_identity(str(url)) in labels
        }

    def holders(self, name: str) -> list[str]:
        """The nodes other than its owner where a poll's (or claim's) keys may be."""
        owner = self.manager.node_for(name)
        everywhere = [s for s in self.sources if s != owner]
        if self.previous is None:
            return everywhere
        old = self._previous_labels.get(self.previous.get_node(name))
        if old is None:  # a server this start lacks (start-up refuses that): look everywhere
            return everywhere
        return [old] if old != owner else []

    async def move_everywhere(self, polls: list[str]) -> int:
        """Make these polls whole on their owners: finish moves staged on the owners
        themselves (from an earlier ring), then move them off every other node where they
        may be (`holders`), one pipeline per node, in parallel (one round trip each when
        nothing is there). Returns the ad-hoc votes moved."""
        by_owner: dict[str, list[str]] = {}
        for poll_id in polls:
            by_owner.setdefault(self.manager.node_for(poll_id), []).append(poll_id)
        resumed = await asyncio.gather(*(self.move_group(o, p) for o, p in by_owner.items()))
        others: dict[str, list[str]] = {}
        for poll_id in polls:
            for node in self.holders(poll_id):
                others.setdefault(node, []).append(poll_id)
        moved = await asyncio.gather(*(self.move_group(s, p) for s, p in others.items() if p))
        return sum(resumed) + sum(moved)

    async def move_group(
        self, source: str, polls: list[str], adhoc: bool = True, defined: bool = True
    ) -> int:
        """Move these polls' keys off `source` to their owners, or finish the moves staged
        there (to their recorded target); returns the ad-hoc votes moved."""
        votes, todo, markers = 0, list(polls), adhoc
        while todo:
            staged = await self._stage(source, todo, adhoc, defined, markers)
            staged = [s for s in staged if s.anything]
            if not staged:
                break
            for s in staged:
                if s.adhoc is not None and s.adhoc.dropped:
                    logger.warning(
                        "rebalance: poll %s on %s had %d values that were no count (reads "
                        "never showed them); not moved",
                        s.poll_id,
                        source,
                        s.adhoc.dropped,
                    )
            self._check_targets(source, staged)
            await self._copy(staged)
            # Keys that reached the source after STAGE (a late batch) get a transfer of
            # their own; markers were taken once, and are kept.
            todo = await self._release(source, staged)
            votes += sum(sum(s.adhoc.counts.values()) for s in staged if s.adhoc)
            # A record staged under an earlier ring went to a node that is no longer the
            # poll's owner, maybe after this scan (or first touch) looked there: move the
            # poll on from it now.
            for target, moved_on in sorted(self._stale(source, staged).items()):
                votes += await self.move_group(target, moved_on)
            markers, defined = False, False
        return votes

    def _targets(self, s: Staged) -> set[str]:
        found = {s.adhoc.target} if s.adhoc is not None else set()
        return found | ({s.defined["target"]} if s.defined is not None else set())

    def _stale(self, source: str, staged: list[Staged]) -> dict[str, list[str]]:
        stale: dict[str, list[str]] = {}
        for s in staged:
            owner = self.manager.node_for(s.poll_id)
            for target in sorted(self._targets(s) - {owner, source}):
                stale.setdefault(target, []).append(s.poll_id)
        return stale

    def _check_targets(self, source: str, staged: list[Staged]) -> None:
        """A record whose target is neither on the ring nor retiring (a ring change cut off,
        then another ring configured without that node) cannot be finished: say so."""
        known = set(self.sources)
        for s in staged:
            for target in sorted(self._targets(s) - known):
                raise NodeUnavailable(
                    target,
                    "not configured",
                    f"poll {s.poll_id} is staged on {source} for a move to node {target} "
                    f"(a ring change cut off), which is neither in REDIS_NODES nor in "
                    f"REDIS_RETIRING_NODES: name it in REDIS_RETIRING_NODES to finish that move",
                    maybe_applied=False,
                )

    async def _stage(
        self, source: str, polls: list[str], adhoc: bool, defined: bool, markers: bool
    ) -> list[Staged]:
        pipe = self.client(source).pipeline(transaction=False)
        # The markers' days are the node's (its TIME), as APPLY_ONCE names them.
        seconds, _ = await self.run(source, "time", self.client(source).time())
        day = idem.today(seconds)
        plan: list[tuple[str, bool]] = []  # (poll, resume only)
        # MOVING_KEY's value, set with each new record: the ring and the retiring nodes, so a
        # later start knows every node this move may have left polls on.
        moving = ring_config(self.manager, with_retiring=True)
        for poll_id in polls:
            owner = self.manager.node_for(poll_id)
            resume_only = owner == source
            plan.append((poll_id, resume_only))
            if adhoc:
                keys = [record_key(poll_id)]
                if not resume_only:
                    keys += [poll_key(poll_id), aside_key(poll_id), options_key(poll_id)]
                    if markers:  # read in the same script; moved by MARKERS_PUT / DROP
                        keys += [idem.once_key(poll_id, day + d) for d in idem.MOVED_DAYS]
                self._eval(
                    pipe, STAGE, len(keys), *keys, uuid.uuid4().hex, owner, MOVING_KEY, moving
                )
            if defined:
                keys = dm.stage_keys(poll_id, resume_only)
                args = (uuid.uuid4().hex, owner, MOVING_KEY, moving)
                self._eval(pipe, dm.STAGE, len(keys), *keys, *args)
                for part in dm.PARTS:
                    pipe.execute_command("DUMP", dm.staged_key(poll_id, part), **{NEVER_DECODE: []})
        replies = iter(await self.run(source, "stage", pipe.execute()))
        found = []
        for poll_id, _ in plan:
            s = Staged(poll_id)
            if adhoc:
                flat, taken = next(replies)
                s.adhoc = Record.parse(flat) if flat else None
                s.markers, s.day = idem.markers_args(taken), day
            if defined:
                flat = next(replies)
                dumps = [next(replies) for _ in dm.PARTS]
                if flat:
                    s.defined = dict(zip(flat[::2], flat[1::2], strict=True))
                    for i in map(int, s.defined["parts"].split(",")):
                        s.dumps[i] = dumps[i - 1]
            found.append(s)
        return found

    async def _copy(self, staged: list[Staged]) -> None:
        by_target = self._copy_commands(staged)
        for node in sorted(by_target):
            pipe = self.client(node).pipeline(transaction=False)
            for command in by_target[node]:
                self._queue(pipe, command)
            await self.run(node, "copy", pipe.execute())

    def _copy_commands(self, staged: list[Staged]) -> dict[str, list[Command]]:
        """What each target must run: options and COPY, markers, RESTOREs and COMMIT."""
        by_target: dict[str, list[Command]] = {}

        def add(node: str, *command: Any) -> None:
            by_target.setdefault(node, []).append(command)

        for s in staged:
            poll_id = s.poll_id
            if s.adhoc is not None:
                record = s.adhoc
                keys = [marker_key(poll_id, record.transfer_id), options_key(poll_id)]
                keys += [poll_key(poll_id), aside_key(poll_id)]
                args: list[str | int] = [
                    record.transfer_id,
                    len(record.options),
                    len(record.counts),
                ]
                for option_id, n in record.counts.items():
                    args += [option_id, n]
                add(record.target, "eval", COPY, len(keys), *keys, *args, *record.options)
            if s.markers:
                keys = [idem.once_key(poll_id, s.day + d) for d in idem.MOVED_DAYS]
                owner = self.manager.node_for(poll_id)
                add(owner, "eval", idem.MARKERS_PUT, len(keys), *keys, *s.markers)
            if s.defined is not None:
                target, transfer_id = s.defined["target"], s.defined["id"]
                for i, payload in s.dumps.items():
                    add(target, "restore", dm.copy_key(poll_id, dm.PARTS[i - 1]), payload)
                keys = dm.commit_keys(poll_id, transfer_id)
                add(target, "eval", dm.COMMIT, len(keys), *keys, transfer_id, s.defined["parts"])
        return by_target

    async def _release(self, source: str, staged: list[Staged]) -> list[str]:
        """Drop what every target now holds; returns the polls whose keys came back."""
        pipe = self.client(source).pipeline(transaction=False)
        watched = []
        for s in staged:
            if s.adhoc is not None:
                keys = [record_key(s.poll_id)]
                if self.manager.node_for(s.poll_id) != source:
                    keys += [poll_key(s.poll_id), aside_key(s.poll_id), options_key(s.poll_id)]
                self._eval(pipe, RELEASE, len(keys), *keys, s.adhoc.transfer_id)
                watched.append(s.poll_id)
            if s.markers:
                keys = [idem.once_key(s.poll_id, s.day + d) for d in idem.MOVED_DAYS]
                self._eval(pipe, idem.MARKERS_DROP, len(keys), *keys, *s.markers)
            if s.defined is not None:
                keys = dm.release_keys(s.poll_id)
                self._eval(pipe, dm.RELEASE, len(keys), *keys, s.defined["id"])
        replies = await self.run(source, "release", pipe.execute())
        back = [r[1] for r in replies if isinstance(r, list)]
        return [poll_id for poll_id, n in zip(watched, back, strict=True) if n]

    # -- claims ----------------------------------------------------------------------------

    async def move_claims(self, source: str, keys: list[str]) -> int:
        """Move these Idempotency-Key claims off `source` to the node each key maps to,
        with their remaining TTL; returns how many moved."""
        keys = [k for k in keys if self.manager.node_for(k) != source]
        if not keys:
            return 0
        pipe = self.client(source).pipeline(transaction=False)
        for key in keys:
            self._eval(pipe, idem.CLAIM_TAKE, 1, idem.claim_key(key))
        taken = await self.run(source, "stage", pipe.execute())
        found = {k: (v, int(ttl)) for k, (v, ttl) in zip(keys, taken, strict=True) if v}
        by_owner: dict[str, list[str]] = {}
        for key in found:
            by_owner.setdefault(self.manager.node_for(key), []).append(key)
        for node in sorted(by_owner):
            pipe = self.client(node).pipeline(transaction=False)
            for key in by_owner[node]:
                value, ttl = found[key]
                pipe.set(idem.claim_key(key), value, nx=True, px=ttl if ttl > 0 else None)
            await self.run(node, "copy", pipe.execute())
        if found:
            pipe = self.client(source).pipeline(transaction=False)
            for key, (value, _) in found.items():
                self._eval(pipe, idem.CLAIM_DROP, 1, idem.claim_key(key), value)
            await self.run(source, "release", pipe.execute())
        return len(found)

    async def move_claim_everywhere(self, key: str) -> int:
        others = self.holders(key)
        return sum(await asyncio.gather(*(self.move_claims(s, [key]) for s in others)))

    # -- the scan --------------------------------------------------------------------------

    async def scan(self, dry_run: bool = False, guard: Guard = unguarded) -> Report:
        """Every poll (ad-hoc or defined), staged move and claim on every node whose owner
        is another node: listed (dry run) or moved, `group` per round trip, each group under
        `guard` (which may leave out polls already moved); progress in `self.report`, and in
        the log once a second (the caller logs the totals at the end).

        Order: the records of staged moves on every node, then the live keys on every node,
        then the records on every node again. A record staged by another instance after
        this scan passed that node's records (its first touch of a poll whose keys the live
        pass had not reached yet) is found by the last pass: when the scan ends, no move
        staged before the end of its live passes is left unfinished (docs/design.md,
        "Several instances")."""
        report = self.report = Report()
        records = [p for p in PATTERNS if p[0] in RECORD_PATTERNS]
        live = [p for p in PATTERNS if p[0] not in RECORD_PATTERNS]
        phases = [(s, p) for s in self.sources for p in records]
        phases += [(s, p) for s in self.sources for p in live]
        if not dry_run:  # a dry run finishes nothing: a second look would count them twice
            phases += [(s, p) for s in self.sources for p in records]
        logged = time.monotonic()
        self._passed = set()  # (node, pattern) whose pass is over
        for source, (pattern, kind) in phases:
            seen: set[str] = set()  # this pass's (SCAN may return a key twice)
            cursor = 0
            while True:
                cursor, keys = await self.run(
                    source,
                    "scan",
                    self.client(source).scan(cursor, match=pattern, count=SCAN_COUNT),
                )
                report.scanned += len(keys)
                if kind == "claim":
                    names = {poll_of(str(k)) for k in keys if str(k).endswith("}")}
                else:
                    names = {poll_of(str(k)) for k in keys}
                names -= seen
                seen |= names
                await self._batch(source, sorted(names), pattern, kind, dry_run, guard)
                if time.monotonic() - logged >= PROGRESS_SECONDS:
                    logged = time.monotonic()
                    logger.info(
                        "rebalance: %s %s: %d keys scanned, %d of %d polls %s so far",
                        source,
                        pattern,
                        report.scanned,
                        report.moved,
                        report.polls,
                        "to move" if dry_run else "moved",
                    )
                if cursor == 0:
                    break
            self._passed.add((source, pattern))
        return report

    async def _batch(
        self, source: str, names: list[str], pattern: str, kind: str, dry_run: bool, guard: Guard
    ) -> None:
        report = self.report
        if kind == "claim":
            names = [k for k in names if self.manager.node_for(k) != source]
            for start in range(0, len(names), self.group):
                chunk = names[start : start + self.group]
                if dry_run:
                    report.claims += len(chunk)
                    continue
                async with guard([f"idem:{k}" for k in chunk]) as todo:
                    report.claims += await self.move_claims(source, [k[5:] for k in todo])
            return
        live = pattern not in RECORD_PATTERNS
        movers = []
        for poll_id in names:
            owner = self.manager.node_for(poll_id)
            if live:
                # A poll moved to a node whose pass is still ahead is counted there.
                if owner == source or dry_run or (owner, pattern) in self._passed:
                    report.polls += 1
                if owner == source:
                    continue
                report.add(source, owner, poll_id)
            else:
                report.staged += 1
            movers.append(poll_id)
        if dry_run:
            return
        adhoc = kind == "adhoc"
        for start in range(0, len(movers), self.group):
            async with guard(movers[start : start + self.group]) as todo:
                if todo:
                    report.votes += await self.move_group(source, todo, adhoc, not adhoc)
