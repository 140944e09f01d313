"""Debian's `pushpin` on free loopback ports, configured from deploy/pushpin/ with only the
ports, the runtime folder, the grip key and the routes rewritten (tests and benchmark).

Started means every part of it works: each of its services logged "started", and a probe
stream held by Pushpin on a route of its own (`PROBE_PATH`, to a small GRIP upstream here)
was subscribed by its handler. Pushpin's parts talk over ZeroMQ links that come up a little
after each logs "started": a stream request in that gap was seen, on a loaded machine, to
be answered but never subscribed, or never answered ("stream zmq send to: Host
unreachable" in its log)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


PROBE_PATH = "/local-pushpin-probe"
PROBE_CHANNEL = "local-pushpin-probe"


def routes_text(shipped: str, upstreams: list[str], probe: str = "") -> str:
    """The shipped routes with the service's address replaced by `upstreams`, in order of
    preference, and (with `probe`, a `host:port`) the probe's route first. Pushpin's targets
    are separated by spaces: a comma starts a target's options, so `a,b` would silently
    route everything (next-link requests too) to `a` alone."""
    text = re.sub(r"(?m)^\* app:8000$", "* " + " ".join(upstreams), shipped)
    return f"*,path_beg={PROBE_PATH} {probe}\n{text}" if probe else text


class _ProbeUpstream(BaseHTTPRequestHandler):
    """Holds every request on the probe channel, with one line of body."""

    def do_GET(self) -> None:
        body = b"probe\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Grip-Hold", "stream")
        self.send_header("Grip-Channel", PROBE_CHANNEL)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


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
        self.probe = ThreadingHTTPServer(("127.0.0.1", 0), _ProbeUpstream)
        threading.Thread(target=self.probe.serve_forever, daemon=True).start()
        self.probe_running = True

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
        probe = f"127.0.0.1:{self.probe.server_address[1]}"
        routes = routes_text((SHIPPED / "routes").read_text(), upstreams, probe)
        (self.folder / "routes").write_text(routes)
        for attempt in range(3):
            try:
                return self._start(timeout)
            except RuntimeError:
                self._stop_pushpin()
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
            if self._ready() and self._probe_held(deadline):
                return self
            time.sleep(0.05)
        self._stop_pushpin()
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

    def _probe_held(self, deadline: float) -> bool:
        """One probe stream through Pushpin: its body arrives and its handler subscribes it
        (the log says so) within a second; the stream is closed after."""
        with socket.create_connection(("127.0.0.1", self.ports["http"]), timeout=1) as sock:
            sock.sendall(f"GET {PROBE_PATH} HTTP/1.1\r\nHost: probe\r\n\r\n".encode())
            until = min(deadline, time.monotonic() + 1)
            got = b""
            with contextlib.suppress(OSError):
                while b"probe\n" not in got and time.monotonic() < until:
                    got += sock.recv(4096)
            while time.monotonic() < until:
                if self.subscriptions(PROBE_CHANNEL) and b"probe\n" in got:
                    return True
                time.sleep(0.02)
        return False

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def subscriptions(self, channel: str) -> int:
        """How many times its handler subscribed a stream to `channel` (from its log)."""
        return self.log_text().count(f" channel={channel}\n")

    def receivers(self, channel: str) -> list[int]:
        """For each publish on `channel`, how many streams it reached (from its log)."""
        pattern = rf"\[handler\] publish channel={re.escape(channel)} receivers=(\d+)"
        return [int(n) for n in re.findall(pattern, self.log_text())]

    def stop(self) -> None:
        """Stop Pushpin (and the probe's upstream: this one is not started again)."""
        self._stop_pushpin()
        if self.probe_running:
            self.probe_running = False
            self.probe.shutdown()
            self.probe.server_close()

    def _stop_pushpin(self) -> None:
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
