"""Fault injection for the exactness suite: a seam around every file operation of the
journal (`FaultyFiles`) and every node call of the store (`FaultyStore`), driven by one
`FaultPlan` that numbers the steps and makes step k fail, lose its reply, or "kill the
process" right after it (from then on, every I/O raises `Crash`, as nothing more would
reach the disk or a node)."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from app.services.file_ops import FileOps
from app.services.polling_service import PollingService
from app.storage.base import Applied, Batch, Counts, NodeUnavailable, Snapshot, Store

T = TypeVar("T")


class Crash(BaseException):
    """The process died at this point (not an Exception: no handler of ours catches it)."""


class FaultPlan:
    def __init__(self, at: int = 0, mode: str = "none", also: tuple[int, str] = (0, "")) -> None:
        self.at = at  # the step to break, 1-based; 0 = none
        self.mode = mode  # "fail", "crash" or "lost_reply"
        self.faults = {at: mode, also[0]: also[1]}  # `also`: a second fault, later
        self.faults.pop(0, None)
        self.step = 0
        self.crashed = False
        self.steps: list[str] = []
        self.lose_reply_once: set[str] = set()  # scripted by the scenario, not a fault

    def before(self, name: str) -> bool:
        """Count a step; raise Crash once dead; True when this step must fail."""
        if self.crashed:
            raise Crash(name)
        self.step += 1
        self.steps.append(name)
        return self.faults.get(self.step) == "fail"

    def after(self) -> bool:
        """True when this step's reply must be lost; Crash when the process dies here."""
        if self.faults.get(self.step) == "crash":
            self.crashed = True
            raise Crash(self.steps[-1])
        return self.faults.get(self.step) == "lost_reply"


class FaultyFiles(FileOps):
    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan

    def _run(self, name: str, call: Callable[[], T]) -> T:
        if self.plan.before(name):
            raise OSError(errno.ENOSPC, f"injected failure of {name}")
        result = call()
        self.plan.after()
        return result

    def open_append(self, path: Path) -> int:
        return self._run("file open", lambda: super(FaultyFiles, self).open_append(path))

    def open_new(self, path: Path) -> int:
        return self._run("file create", lambda: super(FaultyFiles, self).open_new(path))

    def write(self, fd: int, data: bytes) -> int:
        if self.plan.before("file write"):  # a full disk: part of the bytes, then no more
            return super().write(fd, data[: len(data) // 2])
        written = super().write(fd, data)
        self.plan.after()
        return written

    def truncate(self, fd: int, size: int) -> None:
        self._run("file truncate", lambda: super(FaultyFiles, self).truncate(fd, size))

    def fsync(self, fd: int) -> None:
        self._run("fsync", lambda: super(FaultyFiles, self).fsync(fd))

    def close(self, fd: int) -> None:
        self._run("file close", lambda: super(FaultyFiles, self).close(fd))

    def read(self, path: Path) -> bytes:
        return self._run("file read", lambda: super(FaultyFiles, self).read(path))

    def rename(self, source: Path, target: Path) -> None:
        self._run("rename", lambda: super(FaultyFiles, self).rename(source, target))

    def unlink(self, path: Path) -> None:
        self._run("delete", lambda: super(FaultyFiles, self).unlink(path))

    def fsync_dir(self, path: Path) -> None:
        self._run("fsync folder", lambda: super(FaultyFiles, self).fsync_dir(path))


class FaultyStore:
    """A real store behind the plan: each node call is one step."""

    def __init__(self, inner: Store, plan: FaultPlan) -> None:
        self.inner = inner
        self.plan = plan

    @property
    def nodes(self) -> list[str]:
        return self.inner.nodes

    @property
    def marks_per_node(self) -> bool:
        """As the store behind it: so its lists are chained to the last confirmed batch."""
        return bool(getattr(self.inner, "marks_per_node", False))

    def node_for(self, poll_id: str) -> str:
        return self.inner.node_for(poll_id)

    async def _run(self, name: str, node: str, call: Callable[[], Awaitable[T]]) -> T:
        if self.plan.before(name):
            raise NodeUnavailable(node, "redis://injected", "injected failure", maybe_applied=False)
        result = await call()
        scripted = name == "node apply" and node in self.plan.lose_reply_once
        if self.plan.after() or scripted:
            self.plan.lose_reply_once.discard(node)
            raise NodeUnavailable(node, "redis://injected", "reply lost")
        return result

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def check_node(self, node: str) -> None:
        await self._run("node check", node, lambda: self.inner.check_node(node))

    async def read(self, poll_id: str, flusher_ids: list[str]) -> Snapshot:
        node = self.node_for(poll_id)
        return await self._run("node read", node, lambda: self.inner.read(poll_id, flusher_ids))

    async def apply(self, batches: list[Batch]) -> Applied:
        return await self._run("node apply", batches[0].node, lambda: self.inner.apply(batches))

    async def apply_now(self, node: str, counts: Counts) -> Applied:
        return await self._run("node write", node, lambda: self.inner.apply_now(node, counts))

    async def apply_once(self, node: str, key: str, fingerprint: str, counts: Counts) -> str:
        call = lambda: self.inner.apply_once(node, key, fingerprint, counts)  # noqa: E731
        return await self._run("node write once", node, call)

    async def claim(self, key: str, fingerprint: str) -> str:
        node = self.node_for(key)
        return await self._run("node claim", node, lambda: self.inner.claim(key, fingerprint))

    async def register_options(
        self, wanted: dict[str, list[str]], cap: int
    ) -> dict[str, set[str] | None]:
        node = self.node_for(next(iter(wanted)))
        call = lambda: self.inner.register_options(wanted, cap)  # noqa: E731
        return await self._run("node register", node, call)

    async def forget_marks(self, node: str, flusher_ids: list[str]) -> None:
        await self._run("node forget", node, lambda: self.inner.forget_marks(node, flusher_ids))

    async def ping(self) -> dict[str, bool]:
        return await self.inner.ping()

    def describe(self) -> list[tuple[str, str]]:
        return self.inner.describe()


async def abandon(service: PollingService) -> None:
    """What kill -9 leaves: no shutdown, no flush; files and locks simply closed."""
    service.accepting = False
    tasks: list[Any] = [service.flusher._task]
    if service.migration is not None:
        tasks.append(service.migration._task)
    if service.journal is not None:
        tasks.append(service.journal._task)
    if service.lease is not None:
        tasks.append(service.lease._task)  # its leases stay on the nodes until they expire
    for task in tasks:
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if service.journal is not None:
        journal = service.journal
        for generation in journal._segments.values():
            for segment in generation:
                if segment.fd is not None:
                    os.close(segment.fd)
        for fd in [*journal._adopted_locks, journal._lock_fd]:
            if fd is not None:
                os.close(fd)
    store = service.store
    await (store.inner if isinstance(store, FaultyStore) else store).close()


def journaled_service(node_url: str, root: Path, plan: FaultPlan) -> PollingService:
    """A service on one node `n` whose journal's file operations go through the plan;
    it flushes only when told."""
    from app.core.nodes import NodeSpec
    from app.services.journal import Journal
    from app.services.results_cache import ResultsCache
    from app.storage.redis_store import ShardedRedisStore

    return PollingService(
        ShardedRedisStore([NodeSpec("n", node_url)], 100, 2.0),
        batch_interval=3600,
        batch_max_votes=10**9,
        cache=ResultsCache(0, 10),
        max_options_per_poll=10,
        max_pending_pairs_per_node=1000,
        journal=Journal(root, "always", FaultyFiles(plan)),
    )
