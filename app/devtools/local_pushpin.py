"""Debian's `pushpin` on free loopback ports, configured from deploy/pushpin/ with only the
ports, the runtime folder, the grip key and the routes rewritten (tests and benchmark)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from app.devtools.local_nodes import free_port

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "pushpin"
PUSHPIN = shutil.which("pushpin")
# What each of the runner's services logs once it runs (Pushpin 1.36).
STARTED_LINES = (
    "[condure] [condure] started",
    "[zurl] started",
    "[proxy] started",
    "[handler] started",
)


def config_text(shipped: str, folder: Path, ports: dict[str, int], grip_key: str) -> str:
    """The shipped pushpin.conf for a local run."""
    text = shipped.replace("rundir=/var/run/pushpin", f"rundir={folder}/run")
    text = re.sub(r"(?m)^http_port=\d+", f"http_port={ports['http']}", text)
    text = re.sub(r"(?m)^push_in_http_port=\d+", f"push_in_http_port={ports['publish']}", text)
    text = text.replace("tcp://127.0.0.1:5560", f"tcp://127.0.0.1:{ports['push_in']}")
    text = text.replace("tcp://127.0.0.1:5562", f"tcp://127.0.0.1:{ports['push_sub']}")
    text = text.replace("tcp://127.0.0.1:5563", f"tcp://127.0.0.1:{ports['command']}")
    return re.sub(r"(?m)^sig_key=.*$", f"sig_key={grip_key}", text)


def routes_text(shipped: str, upstreams: list[str]) -> str:
    """The shipped routes with the service's address replaced by `upstreams`, in order of
    preference. Pushpin's targets are separated by spaces: a comma starts a target's options,
    so `a,b` would silently route everything (next-link requests too) to `a` alone."""
    return re.sub(r"(?m)^\* app:8000$", "* " + " ".join(upstreams), shipped)


class LocalPushpin:
    def __init__(self, folder: Path, grip_key: str) -> None:
        if PUSHPIN is None:
            raise RuntimeError("pushpin is not installed (apt-get install pushpin)")
        self.folder = folder
        (folder / "run").mkdir(parents=True, exist_ok=True)
        self.grip_key = grip_key
        self.config = folder / "pushpin.conf"
        self._choose_ports(keep=set())
        self.log = folder / "pushpin.log"
        self.process: subprocess.Popen[bytes] | None = None

    def _choose_ports(self, keep: set[str]) -> None:
        """Free ports for every listener but those in `keep` (already handed out)."""
        names = ["http", "publish", "push_in", "push_sub", "command"]
        old = getattr(self, "ports", {})
        self.ports = {name: old[name] if name in keep else free_port() for name in names}
        self.url = f"http://127.0.0.1:{self.ports['http']}"
        self.publish_url = f"http://127.0.0.1:{self.ports['publish']}/publish/"
        shipped = (SHIPPED / "pushpin.conf").read_text()
        self.config.write_text(config_text(shipped, self.folder, self.ports, self.grip_key))

    def start(self, upstreams: list[str], timeout: float = 30.0) -> LocalPushpin:
        """Run it in front of `upstreams` (`host:port` of the service instances). A port
        taken by someone else between choosing and binding: again with other internal ports
        (the HTTP and publish ports, already handed out, stay)."""
        routes = routes_text((SHIPPED / "routes").read_text(), upstreams)
        (self.folder / "routes").write_text(routes)
        for attempt in range(3):
            try:
                return self._start(timeout)
            except RuntimeError:
                self.stop()
                if attempt == 2:
                    raise
                self._choose_ports(keep={"http", "publish"})
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> LocalPushpin:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [str(PUSHPIN), "--config", str(self.config), "--merge-output"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: condure, zurl, proxy, handler with it
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pushpin exited: {self.log.read_text()[-2000:]}")
            if self._ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pushpin did not start in {timeout}s: {self.log.read_text()[-2000:]}")

    def _ready(self) -> bool:
        """Every part said it started and nothing failed. A listening port alone proves
        nothing: a port taken by another server between choosing and binding would look
        ready while condure exited on "failed to bind" (then every stream request hangs or
        is dropped)."""
        text = self.log.read_text(errors="replace")
        if "[ERR]" in text:
            raise RuntimeError(f"pushpin failed to start: {text[-2000:]}")
        started = all(part in text for part in STARTED_LINES)
        return started and all(_listening(port) for port in self.ports.values())

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        # the runner's children, if any outlived it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
