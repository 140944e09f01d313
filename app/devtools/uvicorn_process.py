"""An ASGI app under uvicorn in a child process on a free port (tests and benchmark)."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import threading
import time

import httpx

from app.core.http_protocol import PROTOCOL
from app.devtools.local_nodes import free_port

SERVER_OPTIONS = ["--loop", "uvloop", "--http", PROTOCOL, "--no-access-log"]


def _limit_files(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


class UvicornProcess:
    def __init__(
        self,
        target: str = "app.main:create_app",
        env: dict[str, str] | None = None,
        workers: int = 1,
        factory: bool = True,
        quiet: bool = False,
        port: int | None = None,
        open_files: int | None = None,
    ) -> None:
        """`port`: a given port, for a restart at the same address; `open_files`: start it
        with this open-file limit (soft and hard), like `ulimit -n`."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "uvicorn", target, "--port", str(self.port)]
        command += ["--workers", str(workers), *SERVER_OPTIONS]
        if factory:
            command.append("--factory")
        if quiet:
            command += ["--log-level", "warning"]
        self.process = subprocess.Popen(
            command,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group, so workers can be stopped with it
            preexec_fn=None if open_files is None else lambda: _limit_files(open_files),
        )
        self.output = ""
        # Read what it prints while it runs: a pipe nobody reads fills up (64 KiB) and the
        # service then blocks on its next log line (e.g. a warning per failed flush).
        self._printed: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        if self.process.stdout is not None:
            for line in self.process.stdout:
                self._printed.append(line)

    def wait_ready(self, timeout: float = 60.0, path: str = "/") -> UvicornProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.url} exited: {self.finish()}")
            try:
                httpx.get(self.url + path, timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.url} did not start in {timeout}s")

    def finish(self, timeout: float = 30.0) -> str:
        """Wait for the process to exit and return everything it printed."""
        self.process.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        self.output = "".join(self._printed)
        return self.output

    def terminate(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.finish()

    def kill(self) -> None:
        """Stop at once, worker processes included."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.finish()
