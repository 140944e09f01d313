"""The commands the guides give work as written: `make run` with the nodes a REDIS_NODES
names (or NODES of its own), the documented default nodes being what `make run` records,
`make rebalance ARGS=--dry-run`, and the dry run on a cluster. Real processes, free ports."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis

from app.core.config import Settings
from app.core.nodes import parse_nodes
from app.devtools import run_local
from app.devtools.local_nodes import LocalNode, free_port

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 60.0


def test_the_default_nodes_are_the_ones_make_run_starts() -> None:
    documented = Settings(_env_file=None).nodes  # type: ignore[call-arg]
    assert documented == parse_nodes(run_local.default_nodes("2"))
    three = parse_nodes(run_local.default_nodes("3"))
    assert [(n.label, n.url) for n in three][2] == ("redis_7002", "redis://127.0.0.1:7002")
    for bad in ["0", "17", "two", "-1"]:
        with pytest.raises(SystemExit, match="NODES must be a whole number from 1 to 16"):
            run_local.default_nodes(bad)


class Printed:
    """A child's stdout and stderr, read as it runs (a full pipe would block it)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._reader.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)


def test_make_run_starts_the_local_nodes_a_redis_nodes_names_and_stops_them(
    tmp_path: Path,
) -> None:
    ports = [free_port(), free_port(), free_port()]
    nodes = f"a=redis://127.0.0.1:{ports[0]},b=redis://localhost:{ports[1]}"
    service_port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PORT": str(service_port),
        "LOCAL_DATA_DIR": str(tmp_path / "data"),
        "REDIS_NODES": nodes,
        "REDIS_RETIRING_NODES": f"c=redis://127.0.0.1:{ports[2]}",  # reached to move off
        "NODES": "5",  # not used: REDIS_NODES names the nodes
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "app.devtools.run_local"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    printed = Printed(process)
    try:
        deadline = time.monotonic() + DEADLINE
        while True:
            assert process.poll() is None, printed.text
            assert time.monotonic() < deadline, printed.text
            try:
                health = httpx.get(f"http://127.0.0.1:{service_port}/api/v1/health").json()
                if health["rebalance"]["state"] == "done":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        assert [n["label"] for n in health["nodes"]] == ["a", "b"]
        assert all(n["reachable"] for n in health["nodes"])
        for port in ports:
            with redis.Redis(port=port) as client:
                assert client.ping()
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C
        assert process.wait(DEADLINE) == 0, printed.text
    finally:
        if process.poll() is None:  # failed: stop it, and the nodes it started (own sessions)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            for port in ports:
                with contextlib.suppress(redis.RedisError), redis.Redis(port=port) as client:
                    client.shutdown(nosave=True)
    text = printed.text
    assert "NODES is not used: REDIS_NODES names the nodes" in text
    for label in "abc":
        assert f"node {label} listening on" in text and f"node {label} stopped" in text
    for port in ports:
        with pytest.raises(redis.ConnectionError), redis.Redis(port=port) as client:
            client.ping()


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_RETIRING_NODES": "", **env}
    return subprocess.run(command, env=full, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_make_rebalance_dry_run_and_the_dry_run_on_a_cluster(tmp_path: Path) -> None:
    """`make rebalance` starts the nodes `make run` would (here the one REDIS_NODES names,
    from its data) for the command, and stops them; on a cluster the command refuses."""
    port = free_port()
    data = tmp_path / "data"
    node = LocalNode(port, data / f"node-{port}").start()
    try:
        with redis.Redis(port=port) as client:
            client.hset("poll:{p}", "A", 1)
    finally:
        node.stop()
    env = {"REDIS_NODES": node.url, "LOCAL_DATA_DIR": str(data)}
    done = run(["make", "-s", "rebalance", "ARGS=--dry-run"], env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "would move 0 of 1 polls (0.0%); " in done.stdout
    assert f"node redis listening on {node.url}" in done.stdout
    assert "node redis stopped" in done.stdout
    cluster = {**env, "REDIS_CLUSTER_URL": f"redis://127.0.0.1:{free_port()}"}
    for args in (["--dry-run"], []):
        done = run([sys.executable, "-m", "app.rebalance", *args], cluster)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1
        assert done.stderr.startswith("REDIS_CLUSTER_URL is set: a Redis Cluster places polls")
    node.start()
    try:
        with redis.Redis(port=port) as client:
            assert client.get("ring:config") is None  # neither run recorded a ring
            assert client.hgetall("poll:{p}") == {b"A": b"1"}
    finally:
        node.stop()


def test_make_rebalance_help_starts_no_node(tmp_path: Path) -> None:
    """`make rebalance ARGS=--help` prints the command's help and starts nothing."""
    port = free_port()
    env = {"REDIS_NODES": f"redis://127.0.0.1:{port}", "LOCAL_DATA_DIR": str(tmp_path)}
    done = run(["make", "-s", "rebalance", "ARGS=--help"], env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "--dry-run" in done.stdout
    assert "listening" not in done.stdout
    assert not (tmp_path / f"node-{port}").exists()
