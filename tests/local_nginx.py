"""A real nginx on a free loopback port, running a config the product ships in deploy/.

Only what a run outside Docker needs is rewritten: the listen port, the upstream servers
(the compose service names become the test's service processes), and the paths nginx would
write under /var (temp files, pid, error log). Every other line is the shipped one, so the
limits, locations and proxy settings under test are the product's own."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx

from app.devtools.local_nodes import free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
TEMP_KINDS = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
UPSTREAM = re.compile(r"(upstream app \{\n)(.*?)(\n\s*keepalive)", re.S)


def local_config(
    shipped: Path, folder: Path, listen: int, upstreams: list[str], added: str = ""
) -> Path:
    """`shipped` with our port, our upstream servers and temp paths under `folder` (and
    `added` directives at the top of `http`, for a test of what an operator might add).
    Fails if the shipped file no longer has the lines it rewrites (listen 8000, one
    `server` line per upstream): the compose files rely on both."""
    text = shipped.read_text()
    assert text.count("listen 8000;") == 1, f"{shipped.name}: no single `listen 8000;`"
    text = text.replace("listen 8000;", f"listen 127.0.0.1:{listen};")
    servers = shipped_upstreams(shipped)
    assert len(servers) == len(upstreams), (shipped.name, servers, upstreams)
    found = UPSTREAM.search(text)
    assert found
    ours = "\n".join(f"        server {address};" for address in upstreams)
    text = text[: found.start(2)] + ours + text[found.end(2) :]
    temp = "".join(f"    {kind}_temp_path {folder}/{kind};\n" for kind in TEMP_KINDS) + added
    text = text.replace("http {\n", "http {\n" + temp, 1)
    path = folder / shipped.name
    path.write_text(text)
    return path


def shipped_upstreams(shipped: Path) -> list[str]:
    """The `server` lines of the shipped file's `upstream app` (compose service names)."""
    found = UPSTREAM.search(shipped.read_text())
    assert found, f"{shipped.name}: no `upstream app` block"
    return re.findall(r"^\s*server (\S+);$", found.group(2), re.M)


class LocalNginx:
    """`deploy/<name>` run by the real nginx in front of `upstreams` (host:port)."""

    def __init__(
        self, binary: str, shipped: Path, folder: Path, upstreams: list[str], added: str = ""
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = local_config(shipped, folder, self.port, upstreams, added)
        self.process: subprocess.Popen[bytes] | None = None

    def command(self, *extra: str) -> list[str]:
        main = f"pid {self.folder}/nginx.pid; daemon off;"
        if os.geteuid() == 0:  # as root (CI), workers would run as nobody, who cannot
            main += " user root;"  # write bodies to temp files under pytest's 0700 folders
        error_log = str(self.folder / "error.log")
        return [
            *[self.binary, "-c", str(self.config), "-p", str(self.folder), "-e", error_log],
            *["-g", main, *extra],
        ]

    def errors(self) -> str:
        path = self.folder / "error.log"
        return path.read_text() if path.exists() else ""

    def check(self) -> subprocess.CompletedProcess[str]:
        """`nginx -t`: the config parses and every directive is accepted."""
        return subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30)

    def start(self, timeout: float = 20.0) -> LocalNginx:
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # master and workers in one group, stopped together
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.errors()}")
            try:
                httpx.get(self.url + "/nginx-ready-probe", timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen on {self.port} in {timeout}s: {self.errors()}")

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
