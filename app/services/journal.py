"""Write-ahead journal: accepted votes on local disk until the node confirms them.

Files in a slot folder of `JOURNAL_DIR` (see journal_format.py for their contents):
- `votes-<journal>-<node>-<n>.log`: segments, a record per vote (or per bulk request and
  node), written with one `os.write` before the vote is acknowledged, so a crash of the
  process never loses it (the kernel holds it). `JOURNAL_FSYNC` says when it reaches the
  disk: `always` before the answer (group commit), `everysec` once a second, `off` when the
  kernel chooses. A write that fails is undone (truncated away), so it changes nothing.
- `sealed-<flusher>-<seq>.json`: when the flusher swaps a node's buffer, the batches it makes
  (with their ids) are written to one such file (fsync, atomic rename) *before* they are
  sent; the file names the segments it absorbs, which are deleted after it. It is deleted
  only once the node has confirmed all its batches, and only after those segments are gone.

At start, `recover()` reads what an earlier process left: sealed batches keep their ids (a
node that already applied one ignores it); votes in loose segments come back to be sealed
into new batches. Every step of that is idempotent: the sealed file that absorbs loose
segments is written before they are deleted, so a crash at any point neither loses nor
doubles. Damaged lines and files are moved to `quarantine/` and counted; the rest replays.

Each process takes a slot folder (`slot-0`, ...) under an exclusive lock, so several workers
can share `JOURNAL_DIR`, and at start moves into its own slot whatever is in slots no running
process holds, so a restart with fewer workers recovers everything.

Long because appending, sealing and recovery share the segment bookkeeping and the slot
lock, and their crash-safety arguments read together; the line format and the file
operations are modules of their own (journal_format.py, file_ops.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from app.services.file_ops import FileOps
from app.services.instruments import fsync_histogram
from app.services.journal_format import (
    Damaged,
    Entry,
    decode_sealed,
    decode_segment,
    encode_record,
    encode_sealed,
)
from app.services.journal_space import SealReserve
from app.storage.base import Batch

logger = logging.getLogger("app.journal")


class JournalWriteFailed(OSError):
    """An append could not be made durable. `kept` names the nodes whose records stayed on
    disk anyway (a failed undo): those votes will be counted, so the caller counts them too
    and says the outcome is unknown; with `kept` empty, nothing changed."""

    def __init__(self, cause: OSError, kept: list[str] | None = None) -> None:
        super().__init__(f"the vote journal could not be written: {cause}")
        self.kept = kept or []


@dataclass
class Segment:
    path: Path
    fd: int | None
    size: int = 0
    broken: bool = False  # a failed write could not be undone: append no more here


@dataclass
class SealUnit:
    """Batches and the segments that hold the same votes. Sent only once sealed: the batches
    are in a sealed file and the segments are gone (or listed in that file)."""

    batches: list[Batch]
    segments: list[Path]
    sealed: bool = False


@dataclass
class SealedFile:
    waiting: set[tuple[str, int, str]]  # batches their nodes have not confirmed yet
    segments: list[Path]  # absorbed segments still to delete before this file may go
    batches: dict[tuple[str, int, str], Batch] = field(default_factory=dict)  # all of them


@dataclass
class Recovered:
    batches: list[Batch] = field(default_factory=list)  # sealed, with their original ids
    loose: list[Entry] = field(default_factory=list)  # journaled, never sealed
    loose_files: list[Path] = field(default_factory=list)


@dataclass
class QuarantineReport:
    folder: str
    files: list[str] = field(default_factory=list)
    lines: int = 0


class Journal:
    def __init__(
        self, root: Path, fsync: str, files: FileOps | None = None, max_bytes: int = 1 << 26
    ) -> None:
        self.root = root
        self.directory = root  # the slot folder, once recover() has taken one
        self.fsync = fsync
        self.files = files or FileOps()
        self.journal_id = uuid.uuid4().hex[:12]  # segment names never clash with leftovers
        self.quarantine = QuarantineReport(str(root / "quarantine"))
        self._segments: dict[str, list[Segment]] = {}  # node -> current generation
        self._counter = 0
        self._sealed: dict[Path, SealedFile] = {}
        self._file_of: dict[tuple[str, int, str], Path] = {}  # batch -> its sealed file
        self._lock_fd: int | None = None
        self._adopted_locks: list[int] = []
        self.unread = False  # a sealed file could not be read at start: its marks must stay
        self._fd_lock = threading.Lock()  # an fsync in a thread never meets a closed fd
        self._sync_error: OSError | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.fsync_seconds = fsync_histogram()
        self.reserve = SealReserve(self.files, max_bytes)  # journal_space.py

    @property
    def waits_for_disk(self) -> bool:
        return self.fsync == "always"

    def holds_files(self) -> bool:
        """Whether anything of ours is still on disk (then marks must stay on the nodes)."""
        written = any(s.size for g in self._segments.values() for s in g)
        return self.unread or bool(self._sealed) or written

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

    def _adopt_free_slots(self) -> list[Path]:
        """Lock every slot no running process holds, for as long as we run: their files are
        recovered where they lie, so no other process can take them too."""
        adopted = []
        for slot in sorted(self.root.glob("slot-*")):
            if slot == self.directory:
                continue
            fd = self._lock(slot)
            if fd is not None:
                self._adopted_locks.append(fd)
                adopted.append(slot)
        return adopted

    def _set_aside(self, path: Path, reason: str) -> None:
        """Move a damaged file into quarantine/ (its name kept: moving it twice is harmless)."""
        folder = self.root / "quarantine"
        logger.error("journal: %s is damaged (%s); moving it to %s", path.name, reason, folder)
        try:
            folder.mkdir(exist_ok=True)
            self.files.rename(path, folder / path.name)
        except OSError as exc:
            logger.error("journal: could not move %s (%s); it stays and is skipped", path, exc)
        self.quarantine.files.append(path.name)

    def _keep_damaged_lines(self, path: Path, lines: list[bytes]) -> None:
        folder = self.root / "quarantine"
        target = folder / f"{path.name}.rejected"
        logger.error(
            "journal: %d damaged lines in %s, kept in %s; the rest replays",
            len(lines),
            path.name,
            target,
        )
        self.quarantine.files.append(target.name)
        self.quarantine.lines += len(lines)
        try:
            folder.mkdir(exist_ok=True)
            self.files.write_atomically(target, b"".join(line + b"\n" for line in lines))
        except OSError as exc:
            logger.error("journal: could not keep the damaged lines of %s: %s", path.name, exc)

    def _read(self, path: Path) -> bytes | None:
        try:
            return self.files.read(path)
        except OSError as exc:
            logger.error("journal: cannot read %s (%s); it stays for the next start", path, exc)
            return None

    def recover(self) -> Recovered:
        """Take a slot and read what earlier processes left in it and in free slots.

        A sealed file only ever absorbs segments of its own folder, so each folder is read
        on its own; loose segments of an adopted slot are moved into ours (one atomic rename
        each) before they are sealed here. Start-up never fails on damage: damaged files and
        lines go to quarantine/ and the rest replays. A file that cannot be read stays for
        the next start; if it is a sealed file, its folder's loose segments wait too."""
        self._take_slot()
        found = Recovered()
        folders = [self.directory, *self._adopt_free_slots()]
        for folder in folders:
            self._recover_folder(folder, found)
        self.reserve.open(self.directory, folders)
        for sealed in self._sealed.values():
            self._delete_segments(sealed)
        found.batches.sort(key=lambda b: b.key)
        return found

    def _recover_folder(self, folder: Path, found: Recovered) -> None:
        for path in folder.glob("*.tmp"):
            with contextlib.suppress(OSError):
                self.files.unlink(path)
        segments = sorted(folder.glob("votes-*.log"))
        absorbed: set[str] = set()
        for path in sorted(folder.glob("sealed-*.json")):
            data = self._read(path)
            if data is None:
                self.unread = True  # it may absorb loose segments: they wait with it
                return
            try:
                contents = decode_sealed(data)
            except Damaged as exc:
                self._set_aside(path, str(exc))
                continue
            names = set(contents.segments)
            self._track(path, contents.batches, [p for p in segments if p.name in names])
            found.batches += contents.batches
            absorbed |= names
        for path in segments:
            if path.name in absorbed:
                continue
            if folder != self.directory:
                try:
                    self.files.rename(path, self.directory / path.name)
                except OSError as exc:
                    logger.error("journal: cannot move %s (%s); it waits", path.name, exc)
                    continue
                path = self.directory / path.name
            data = self._read(path)
            if data is None:
                continue
            segment = decode_segment(data)
            if segment.damaged:
                self._keep_damaged_lines(path, segment.damaged)
            found.loose += segment.entries
            found.loose_files.append(path)
            self.reserve.adopt(path, len(data), len(segment.entries))

    def start(self) -> None:
        if self.fsync in ("always", "everysec"):
            self._task = asyncio.create_task(self._commit_loop(), name="journal")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with self._fd_lock:
            for generation in self._segments.values():
                for segment in generation:
                    self._close(segment, sync=True)
        self._segments = {node: [s for s in g if s.size] for node, g in self._segments.items()}
        self.retry_deletes()
        self.reserve.close()
        for fd in [*self._adopted_locks, *([self._lock_fd] if self._lock_fd else [])]:
            os.close(fd)  # releases the slots
        self._adopted_locks, self._lock_fd = [], None

    def _close(self, segment: Segment, sync: bool) -> None:
        if segment.fd is None:
            return
        fd, segment.fd = segment.fd, None
        try:
            if sync and self.fsync != "off":
                self.files.fsync(fd)
        except OSError as exc:
            # Votes in this segment may not be on disk: fail every vote waiting now, and
            # the group commit in progress (its waiters may have written here too).
            self._sync_error = exc
            self._fail_waiters(self._waiters, exc)
            self._waiters = []
        finally:
            with contextlib.suppress(OSError):
                self.files.close(fd)
        if not segment.size:
            self.reserve.forget(segment.path)
            with contextlib.suppress(OSError):
                self.files.unlink(segment.path)

    # -- votes -----------------------------------------------------------------------------

    def _writable(self, node: str) -> Segment:
        generation = self._segments.setdefault(node, [])
        if generation and generation[-1].fd is not None and not generation[-1].broken:
            return generation[-1]
        self._counter += 1
        path = self.directory / f"votes-{self.journal_id}-{node}-{self._counter}.log"
        segment = Segment(path, self.files.open_append(path))
        generation.append(segment)
        return segment

    def _undo(self, segment: Segment, size: int) -> bool:
        """Cut a segment back to `size` bytes; False (and no more appends there) if not."""
        try:
            assert segment.fd is not None
            self.files.truncate(segment.fd, size)
        except OSError:
            segment.broken = True
            return False
        segment.size = size
        return True

    def _write(self, node: str, record: bytes, triples: int) -> tuple[Segment, int, int]:
        """Append one record; first its share of the seal is reserved (JournalFull if not)."""
        if not self.reserve.opened:
            self.reserve.open(self.directory, [])
        segment = self._writable(node)
        before = segment.size
        share = self.reserve.take(segment.path, len(record), triples)
        assert segment.fd is not None
        try:
            self.files.write_all(segment.fd, record)
        except OSError:
            if self._undo(segment, before):
                self.reserve.give_back(segment.path, share)
            raise
        segment.size = before + len(record)
        return segment, before, share

    def append(self, records: dict[str, list[Entry]]) -> None:
        """Write each node's entries as one record, all or nothing: if one write fails, the
        ones before it are undone, and JournalWriteFailed says which could not be."""
        done: list[tuple[str, Segment, int, int]] = []
        for node, entries in records.items():
            try:
                segment, before, share = self._write(node, encode_record(entries), len(entries))
            except OSError as exc:
                kept = []
                for n, s, size, taken in reversed(done):
                    if self._undo(s, size):
                        self.reserve.give_back(s.path, taken)
                    else:
                        kept.append(n)
                raise JournalWriteFailed(exc, kept) from exc
            done.append((node, segment, before, share))

    def append_vote(self, node: str, poll_id: str, option_id: str) -> None:
        """One vote: the hot path's append."""
        try:
            self._write(node, encode_record([(poll_id, option_id, 1)]), 1)
        except OSError as exc:
            raise JournalWriteFailed(exc) from exc

    async def commit(self) -> None:
        """Under `always`: return once everything appended so far is on disk."""
        if not self.waits_for_disk:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wanted.set()
        await waiter

    async def _commit_loop(self) -> None:
        try:
            while True:
                await self._commit_once()
        except BaseException as exc:  # never leave a vote waiting for a loop that has ended
            ended = isinstance(exc, Exception | asyncio.CancelledError)
            self._fail_waiters(self._waiters, OSError("the journal stopped") if ended else exc)
            raise

    @staticmethod
    def _fail_waiters(waiters: list[asyncio.Future[None]], exc: BaseException) -> None:
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(exc)

    async def _commit_once(self) -> None:
        if self.waits_for_disk:
            await self._wanted.wait()
        else:
            await asyncio.sleep(1.0)
        self._wanted.clear()
        waiters, self._waiters = self._waiters, []
        try:
            await asyncio.to_thread(self.sync_open)
            if self._sync_error is not None:
                error, self._sync_error = self._sync_error, None
                raise error
        except OSError as exc:
            logger.error("journal fsync failed: %s", exc)
            self._fail_waiters(waiters, exc)
            return
        except BaseException as exc:
            self._fail_waiters(waiters, exc)
            raise
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def sync_open(self) -> None:
        with self._fd_lock:
            fds = [s.fd for g in self._segments.values() for s in g if s.fd is not None]
            if not fds:
                return
            started = time.perf_counter()
            for fd in fds:
                self.files.fsync(fd)
            self.fsync_seconds.observe(time.perf_counter() - started)

    # -- batches ---------------------------------------------------------------------------

    def detach(self, node: str) -> list[Path]:
        """The node's buffer is being swapped: its segments hold exactly the swapped votes.
        Close them (fsynced) and start a new generation for the votes that follow."""
        generation = self._segments.pop(node, [])
        with self._fd_lock:
            for segment in generation:
                self._close(segment, sync=True)
        return [s.path for s in generation if s.size]

    def _track(self, path: Path, batches: list[Batch], segments: list[Path]) -> None:
        self._sealed[path] = SealedFile({b.key for b in batches}, segments)
        self._sealed[path].batches = {b.key: b for b in batches}
        for batch in batches:
            self._file_of[batch.key] = path

    def seal(self, unit: SealUnit) -> None:
        """Make the unit's batches durable in one file that absorbs its segments, then
        delete the segments. Raises OSError with nothing changed if the file cannot be
        written; the unit may then be sealed again later."""
        first = unit.batches[0]
        path = self.directory / f"sealed-{first.flusher_id}-{first.seq}.json"
        data = encode_sealed(unit.batches, [p.name for p in unit.segments])
        self.reserve.free_for(unit.segments)  # the space reserved for this seal
        try:
            self.files.write_atomically(path, data)
        except OSError:
            self.reserve.restore()
            raise
        self.reserve.sealed(unit.segments)
        self._track(path, unit.batches, list(unit.segments))
        unit.sealed = True
        self._delete_segments(self._sealed[path])

    def _delete_segments(self, sealed: SealedFile) -> None:
        remaining = []
        for segment in sealed.segments:
            try:
                self.files.unlink(segment)
            except OSError:
                remaining.append(segment)
        sealed.segments = remaining

    def readdress(self, batch: Batch, parts: list[Batch]) -> None:
        """A recovered batch for a node no longer configured goes to the nodes its polls
        belong to now, as `parts` (same flusher id and seq): its file waits for them."""
        path = self._file_of.pop(batch.key)
        self._sealed[path].waiting.discard(batch.key)
        for part in parts:
            self._sealed[path].waiting.add(part.key)
            self._sealed[path].batches[part.key] = part
            self._file_of[part.key] = path

    def release(self, batches: list[Batch]) -> None:
        """The node confirmed these batches: a sealed file whose batches have all been
        confirmed is deleted (after the segments it absorbed, so none can replay)."""
        for batch in batches:
            path = self._file_of.pop(batch.key, None)
            if path is not None:
                self._sealed[path].waiting.discard(batch.key)
        self.retry_deletes()

    def held(self, node: str, lost: Callable[[Batch], bool]) -> list[Batch]:
        """Batches the node confirmed that are still on disk here (their file waits for
        other batches) and that it `lost` (their mark there fell below them:
        app/services/forgetting.py). They are waited for again, and returned to be sent."""
        found = []
        for path, sealed in self._sealed.items():
            for key, batch in sealed.batches.items():
                if batch.node != node or not lost(batch):
                    continue
                if key not in sealed.waiting:
                    sealed.waiting.add(key)
                    self._file_of[key] = path
                    found.append(batch)
        return sorted(found, key=lambda b: b.key)

    def retry_deletes(self) -> None:
        for path, sealed in list(self._sealed.items()):
            if sealed.waiting:
                continue
            self._delete_segments(sealed)
            if sealed.segments:
                continue
            try:
                self.files.unlink(path)
            except OSError as exc:
                logger.warning("journal: could not delete %s yet: %s", path.name, exc)
                continue
            del self._sealed[path]

    def delete(self, paths: list[Path]) -> None:
        """Delete files with nothing left to replay; one that stays is read again next start."""
        for path in paths:
            self.reserve.forget(path)
            with contextlib.suppress(OSError):
                self.files.unlink(path)
