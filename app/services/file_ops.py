"""Every file operation the journal makes, in one object.

This is the journal's seam for fault injection: a test replaces it with one that fails a
chosen step (or "kills the process" right after it) and checks that nothing acknowledged is
lost or doubled. Production code uses `FileOps()` as is.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


class FileOps:
    def open_append(self, path: Path) -> int:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def open_new(self, path: Path) -> int:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def write(self, fd: int, data: bytes) -> int:
        return os.write(fd, data)

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def allocate(self, fd: int, size: int) -> None:
        """Make the file take `size` bytes of disk (ENOSPC if the disk cannot)."""
        os.posix_fallocate(fd, 0, size)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def read(self, path: Path) -> bytes:
        return path.read_bytes()

    def rename(self, source: Path, target: Path) -> None:
        os.replace(source, target)

    def unlink(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_all(self, fd: int, data: bytes) -> None:
        """Write every byte or raise OSError (a short write is an error here)."""
        written = self.write(fd, data)
        if written != len(data):
            raise OSError(f"short write: {written} of {len(data)} bytes")

    def write_atomically(self, path: Path, data: bytes) -> None:
        """`path` holds all of `data` or is untouched: write a temporary file, fsync it,
        rename it over `path`, fsync the folder. The temporary file is removed on failure."""
        tmp = path.with_name(path.name + ".tmp")
        fd = self.open_new(tmp)
        try:
            try:
                self.write_all(fd, data)
                self.fsync(fd)
            finally:
                self.close(fd)
            self.rename(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):  # a leftover .tmp goes at the next start
                self.unlink(tmp)
            raise
        self.fsync_dir(path.parent)
