"""The disk space a seal needs, reserved before a vote is acknowledged.

A sealed file (`journal.py`) needs new space, and only the seal lets the segments it absorbs
be deleted. On a full disk that would deadlock: every seal fails with ENOSPC and the votes
never leave. So the journal keeps a file `seal-reserve` in its slot, allocated
(`posix_fallocate`) to at least what sealing every unsealed segment can take. An append
first makes sure the reserve covers it (growing the file a chunk at a time: one system call
per chunk, not per vote); if the disk cannot give that space, the vote is refused (503) and
nothing changes. A seal first shrinks the reserve by what its segments reserved, so the
space is there for the sealed file, and deleting the segments afterwards frees theirs.

`need` is also the journal's byte cap (`JOURNAL_MAX_BYTES`): past it, votes are refused, so
the votes held on disk are bounded, not only the (poll, option) pairs in memory.

How much a seal can take: a sealed file holds, per (poll, option) pair of a batch,
`"poll":{"option":n}` plus separators, at most len(poll) + len(option) + 26 bytes (n has at
most 16 digits), which is at most 25 bytes more than the shortest segment triple for it
(`poll TAB option TAB n TAB`). So `len(record) + 25 * triples` bounds a record's share
(the extra byte per triple pays for a batch header every 1,000 polls), and `SEAL_BASE` per
segment pays for the file's header and the segment's name in it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from pathlib import Path

from app.services.file_ops import FileOps

logger = logging.getLogger("app.journal")

RESERVE_NAME = "seal-reserve"
SEAL_BASE = 1024  # per segment: the sealed file's header, a batch header, the segment name
PER_TRIPLE = 25


class JournalFull(OSError):
    """No room for this vote's share of a seal (the disk is full, or `JOURNAL_MAX_BYTES`
    is reached): refused with nothing written."""

    def __init__(self, reason: str) -> None:
        super().__init__(errno.ENOSPC, f"the vote journal is full ({reason}); retry later")


def seal_share(record_bytes: int, triples: int) -> int:
    """What a record can add to the sealed file that absorbs its segment."""
    return record_bytes + PER_TRIPLE * triples


class SealReserve:
    def __init__(self, files: FileOps, max_bytes: int) -> None:
        self.files = files
        self.max_bytes = max_bytes
        self.chunk = max(4096, min(1 << 20, max_bytes // 16))
        self.need = 0  # what sealing every unsealed segment can take
        self.reserved = 0  # bytes allocated to the reserve file
        self._share: dict[Path, int] = {}  # unsealed segment -> its part of `need`
        self._fd: int | None = None
        self._path: Path | None = None

    def open(self, directory: Path, stale: list[Path]) -> None:
        """Start with an empty reserve in `directory`; the reserves earlier processes left
        there and in `stale` folders are deleted first: that space is what sealing their
        loose segments (now counted by `adopt`) takes."""
        for folder in {directory, *stale}:
            with contextlib.suppress(OSError):
                self.files.unlink(folder / RESERVE_NAME)
        self._path = directory / RESERVE_NAME
        self.reserved = 0
        try:
            self._fd = self.files.open_new(self._path)
        except OSError as exc:  # appends try again, and are refused until it opens
            logger.error("journal: cannot create %s: %s", self._path, exc)

    @property
    def opened(self) -> bool:
        return self._fd is not None

    def close(self) -> None:
        """At a stop; a reserve no segment needs any more is deleted."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.files.close(self._fd)
            self._fd = None
            if not self.need and self._path is not None:
                with contextlib.suppress(OSError):
                    self.files.unlink(self._path)

    def adopt(self, segment: Path, record_bytes: int, triples: int) -> None:
        """A loose segment found at start, to be sealed by this process."""
        share = SEAL_BASE + seal_share(record_bytes, triples)
        self._share[segment] = self._share.get(segment, 0) + share
        self.need += share

    def take(self, segment: Path, record_bytes: int, triples: int) -> int:
        """Make room for a record about to be appended to `segment`; returns its share, to
        give back if the write fails. Raises JournalFull with nothing changed."""
        share = seal_share(record_bytes, triples) + (0 if segment in self._share else SEAL_BASE)
        wanted = self.need + share
        if wanted > self.max_bytes:
            raise JournalFull(f"JOURNAL_MAX_BYTES={self.max_bytes} are held for seals")
        if wanted > self.reserved:
            try:
                self._grow(wanted + self.chunk)
            except JournalFull:
                self._grow(wanted)  # the disk's last bytes, one record at a time
        self._share[segment] = self._share.get(segment, 0) + share
        self.need = wanted
        return share

    def give_back(self, segment: Path, share: int) -> None:
        """A write that was undone: its share is no longer needed."""
        left = self._share.get(segment, 0) - share
        if left > SEAL_BASE:
            self._share[segment] = left
            self.need -= share
        else:
            self.need -= self._share.pop(segment, 0)

    def forget(self, segment: Path) -> None:
        """An empty segment deleted without a seal."""
        self.need -= self._share.pop(segment, 0)

    def free_for(self, segments: list[Path]) -> None:
        """Before sealing `segments`: shrink the reserve by their share, so the sealed file
        has that space."""
        share = sum(self._share.get(s, 0) for s in segments)
        if self._fd is None or not share or not self.reserved:
            return
        size = max(0, self.reserved - share)
        try:
            self.files.truncate(self._fd, size)
        except OSError as exc:
            logger.error("journal: cannot shrink %s: %s", self._path, exc)
            return
        self.reserved = size

    def sealed(self, segments: list[Path]) -> None:
        """Their seal is on disk: they need nothing any more."""
        for segment in segments:
            self.need -= self._share.pop(segment, 0)

    def restore(self) -> None:
        """A seal failed after `free_for`: take the reserve back if the disk still can
        (if not, appends are refused until it can, since `reserved < need`)."""
        with contextlib.suppress(JournalFull):
            if self.need > self.reserved:
                self._grow(self.need)

    def _grow(self, size: int) -> None:
        if self._fd is None:
            raise JournalFull("the journal has not started")
        try:
            self.files.allocate(self._fd, size)
        except OSError as exc:
            raise JournalFull(f"no disk space for the seal reserve: {exc}") from exc
        self.reserved = size
