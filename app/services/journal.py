"""Write-ahead journal: accepted votes on local disk until the node confirms them.

Files in `JOURNAL_DIR`:
- `votes-<journal>-<node>-<n>.log`: one segment per node per buffer generation, a line per
  vote (`poll<TAB>option<TAB>count`), written with `os.write` as the vote is taken, so a
  crash of the process never loses it (the kernel holds it). `JOURNAL_FSYNC` says when it
  reaches the disk: `always` before the vote is acknowledged (group commit: one fsync for
  every vote waiting), `everysec` once a second, `off` when the kernel chooses.
- `sealed-<flusher>-<seq>.json`: when the flusher swaps a node's buffer, the batches it makes
  are written to one such file (fsync, atomic rename) before the segment is deleted; the file
  is deleted only after the node confirms them (a node confirms its batches together). After
  a crash they are replayed with their original ids, so the node's high-water mark ignores
  any it had already applied.

Each process takes a slot folder (`slot-0`, `slot-1`, ...) under an exclusive lock, so
several workers can share `JOURNAL_DIR`. At start it also moves into its own slot whatever is
in slots no running process holds, so a restart with fewer workers recovers everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from app.storage.base import Batch, Counts

logger = logging.getLogger("app.journal")


@dataclass
class Segment:
    path: Path
    fd: int


@dataclass
class Recovered:
    batches: list[Batch] = field(default_factory=list)
    loose: Counts = field(default_factory=dict)  # votes journaled but never put in a batch
    loose_files: list[Path] = field(default_factory=list)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    def __init__(self, root: Path, fsync: str) -> None:
        self.root = root
        self.directory = root  # the slot folder, once recover() has taken one
        self.fsync = fsync
        self.journal_id = uuid.uuid4().hex[:12]  # segment names never clash with leftovers
        self._open: dict[str, Segment] = {}
        self._counter = 0
        self._sealed_files: dict[tuple[str, int], Path] = {}  # first batch of a file -> file
        self._lock_fd: int | None = None
        self._fd_lock = threading.Lock()  # an fsync in a thread never meets a closed fd
        self._waiters: list[asyncio.Future[None]] = []
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def waits_for_disk(self) -> bool:
        return self.fsync == "always"

    # -- start and stop --------------------------------------------------------------------

    @staticmethod
    def _lock(slot: Path) -> int | None:
        """An exclusive lock on the slot, or None if a running process holds it."""
        slot.mkdir(parents=True, exist_ok=True)
        fd = os.open(slot / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def _take_slot(self) -> None:
        for index in range(1024):
            slot = self.root / f"slot-{index}"
            fd = self._lock(slot)
            if fd is not None:
                self.directory, self._lock_fd = slot, fd
                return
        raise RuntimeError(f"no free journal slot under {self.root}")

    def _adopt_free_slots(self) -> None:
        """Move the files of every slot no running process holds into ours. Names are
        unique (journal and flusher ids), so nothing is overwritten."""
        for slot in self.root.glob("slot-*"):
            if slot == self.directory:
                continue
            fd = self._lock(slot)
            if fd is None:
                continue
            try:
                for path in [*slot.glob("sealed-*.json"), *slot.glob("votes-*.log")]:
                    path.rename(self.directory / path.name)
            finally:
                os.close(fd)

    def recover(self) -> Recovered:
        """Take a slot and read what an earlier process left in it; segments that were
        already sealed are deleted."""
        self._take_slot()
        self._adopt_free_slots()
        found = Recovered()
        sealed: set[str] = set()
        for path in sorted(self.directory.glob("sealed-*.json")):
            data = json.loads(path.read_text())
            batches = [
                Batch(b["flusher_id"], b["seq"], b["node"], b["counts"]) for b in data["batches"]
            ]
            self._sealed_files[batches[0].flusher_id, batches[0].seq] = path
            found.batches += batches
            sealed.update(data["segments"])
        for path in sorted(self.directory.glob("votes-*.log")):
            if path.name in sealed:
                path.unlink()
                continue
            for line in path.read_bytes().decode().splitlines(keepends=True):
                if not line.endswith("\n"):
                    continue  # torn last write: never acknowledged under `always`
                poll_id, option_id, n = line.rstrip("\n").split("\t")
                options = found.loose.setdefault(poll_id, {})
                options[option_id] = options.get(option_id, 0) + int(n)
            found.loose_files.append(path)
        for path in self.directory.glob("*.tmp"):
            path.unlink()
        found.batches.sort(key=lambda b: (b.flusher_id, b.seq))
        return found

    def start(self) -> None:
        if self.fsync in ("always", "everysec"):
            self._task = asyncio.create_task(self._commit_loop(), name="journal")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with self._fd_lock:
            for segment in self._open.values():
                os.fsync(segment.fd)
                os.close(segment.fd)
        self._open.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the slot
            self._lock_fd = None

    # -- votes -----------------------------------------------------------------------------

    def append(self, node: str, poll_id: str, option_id: str, n: int = 1) -> None:
        segment = self._open.get(node)
        if segment is None:
            self._counter += 1
            path = self.directory / f"votes-{self.journal_id}-{node}-{self._counter}.log"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            segment = self._open[node] = Segment(path, fd)
        os.write(segment.fd, f"{poll_id}\t{option_id}\t{n}\n".encode())

    async def commit(self) -> None:
        """Under `always`: return once everything appended so far is on disk."""
        if not self.waits_for_disk:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wanted.set()
        await waiter

    async def _commit_loop(self) -> None:
        while True:
            if self.waits_for_disk:
                await self._wanted.wait()
            else:
                await asyncio.sleep(1.0)
            self._wanted.clear()
            waiters, self._waiters = self._waiters, []
            try:
                await asyncio.to_thread(self.sync_open)
            except OSError as exc:
                logger.error("journal fsync failed: %s", exc)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
                continue
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def sync_open(self) -> None:
        with self._fd_lock:
            for segment in list(self._open.values()):
                os.fsync(segment.fd)

    # -- batches ---------------------------------------------------------------------------

    def seal(self, node: str, batches: list[Batch]) -> None:
        """The node's buffer was swapped into `batches`: make them durable in one file, then
        drop the segment that held the same votes. Runs in the same step as the swap."""
        segment = self._open.get(node)
        first = batches[0]
        path = self.directory / f"sealed-{first.flusher_id}-{first.seq}.json"
        tmp = path.with_suffix(".tmp")
        data = {
            "segments": [segment.path.name] if segment else [],
            "batches": [
                {"flusher_id": b.flusher_id, "seq": b.seq, "node": b.node, "counts": b.counts}
                for b in batches
            ],
        }
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.directory)
        self._sealed_files[first.flusher_id, first.seq] = path
        self._open.pop(node, None)
        if segment is not None:
            with self._fd_lock:
                os.close(segment.fd)
            segment.path.unlink()

    def release(self, batches: list[Batch]) -> None:
        """The node confirmed these batches: the files that held them can go."""
        for batch in batches:
            path = self._sealed_files.pop((batch.flusher_id, batch.seq), None)
            if path is not None:
                path.unlink(missing_ok=True)
