"""A start that cannot go on says why in one line on stderr, with no traceback, and exits
non-zero: through `uvicorn app.main:create_app --factory`, `live-polling` (app/cli.py) and
`make run` (app/devtools/run_local.py), each a real process on free ports. A bad setting
through all three; the ring refusal (RebalanceBlocked) through uvicorn and `make run`; a
node that may evict (NodeMisconfigured) through `live-polling`; a journal of the other
store (StoreChanged) through uvicorn; the service's port in use through `live-polling` and
`make run`, and a node's port in use through `make run`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from app.devtools.local_nodes import LocalNode, free_port
from app.services.journal_format import encode_sealed
from app.storage.base import Batch

ROOT = Path(__file__).resolve().parent.parent
GONE = "gone=redis://10.9.9.9:6379"  # a server the nodes' ring record names, nowhere now
Entry = Callable[[int], list[str]]  # the command that serves on this port


def uvicorn_entry(port: int) -> list[str]:
    uvicorn = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory"]
    return [*uvicorn, "--port", str(port)]


def cli_entry(port: int) -> list[str]:
    return [sys.executable, "-m", "app.cli", "--port", str(port)]


def make_run_entry(port: int) -> list[str]:
    return [sys.executable, "-m", "app.devtools.run_local"]  # PORT comes from the environment


ENTRIES = {"uvicorn": uvicorn_entry, "live-polling": cli_entry, "make run": make_run_entry}


def start(
    entry: str, env: dict[str, str], tmp_path: Path, port: int | None = None
) -> tuple[int, str, str]:
    """Run the entry point until it exits (a refused start exits by itself)."""
    port = port or free_port()
    full = {**os.environ, "PORT": str(port), "LOCAL_DATA_DIR": str(tmp_path / "data")}
    full |= {"PYTHONPATH": str(ROOT), **env}  # run from tmp_path: no developer's .env
    done = subprocess.run(
        ENTRIES[entry](port), env=full, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    return done.returncode, done.stdout, done.stderr


def assert_one_line(code: int, out: str, err: str, *expected: str) -> None:
    printed = out + err
    assert code != 0, printed
    assert "Traceback" not in printed, printed
    lines = [line for line in err.splitlines() if all(e in line for e in expected)]
    assert len(lines) == 1, printed


@pytest.fixture
def recorded_node(tmp_path: Path) -> Iterator[LocalNode]:
    """A node (its data where `make run` keeps it) whose ring record names a server that no
    setting names: every start on it must refuse (RebalanceBlocked)."""
    port = free_port()
    node = LocalNode(port, tmp_path / "data" / f"node-{port}").start()
    try:
        with redis.Redis(port=port) as client:
            ring = {"virtual_nodes": 100, "nodes": dict([GONE.split("=")])}
            client.set("ring:config", json.dumps(ring))
        yield node
    finally:
        node.kill()


# `live-polling` and `make run` serve through the same `app.cli.serve`, and the uvicorn
# command through uvicorn's own; each cause is checked through two of the three at least.
@pytest.mark.parametrize("entry", ["uvicorn", "make run"])
def test_a_ring_the_records_rule_out_is_one_line(
    entry: str, recorded_node: LocalNode, tmp_path: Path
) -> None:
    if entry == "make run":
        recorded_node.stop()  # make run starts the node itself, from the same data
    result = start(entry, {"REDIS_NODES": recorded_node.url}, tmp_path)
    assert_one_line(*result, "start refused: RebalanceBlocked", GONE)


def test_a_node_that_may_evict_and_a_journal_of_the_other_store_are_one_line(
    tmp_path: Path,
) -> None:
    port = free_port()
    node = LocalNode(port, extra_args=["--maxmemory-policy", "allkeys-lru"]).start()
    try:
        result = start("live-polling", {"REDIS_NODES": node.url}, tmp_path)
        assert_one_line(*result, "start refused: NodeMisconfigured", "allkeys-lru")
        with redis.Redis(port=port) as client:
            client.config_set("maxmemory-policy", "noeviction")
        slot = tmp_path / "journal" / "slot-0"
        slot.mkdir(parents=True)
        sealed = encode_sealed([Batch("f", 1, "cluster", {"p": {"A": 1}})], [])
        (slot / "sealed-f-1.json").write_bytes(sealed)
        env = {"REDIS_NODES": node.url, "JOURNAL_DIR": str(tmp_path / "journal")}
        result = start("uvicorn", env, tmp_path)
        assert_one_line(*result, "start refused: StoreChanged", "['cluster']")
        with redis.Redis(port=port) as client:
            assert client.keys("poll:*") == []  # nothing was counted
    finally:
        node.kill()


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_bad_setting_is_one_line(entry: str, tmp_path: Path) -> None:
    result = start(entry, {"REDIS_NODES": "http://nope:1"}, tmp_path)
    assert_one_line(*result, "invalid settings: REDIS_NODES entry 1")


@pytest.mark.parametrize("entry", ["live-polling", "make run"])
def test_a_port_in_use_is_one_line(entry: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = start(entry, {"REDIS_NODES": ""}, tmp_path, port)
    assert_one_line(*result, str(port), "in use")


def test_make_run_refuses_a_node_port_in_use_and_stops_the_nodes_it_started(
    tmp_path: Path,
) -> None:
    first = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        nodes = f"a=redis://127.0.0.1:{first},b=redis://localhost:{busy}"
        result = start("make run", {"REDIS_NODES": nodes}, tmp_path)
    assert_one_line(*result, "make run: node b", f"port {busy} is already in use")
    assert "node a stopped" in result[1]
    with pytest.raises(redis.ConnectionError), redis.Redis(port=first) as client:
        client.ping()
