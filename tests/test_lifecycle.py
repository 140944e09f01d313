"""The real service in a child process: graceful shutdown flushes, restarts keep votes."""

from __future__ import annotations

import signal
from collections.abc import Callable

import httpx

from app.devtools.local_nodes import LocalNode
from tests.conftest import ServiceProcess, stored_counts


def test_sigterm_flushes_held_votes_before_exit(
    two_nodes: list[LocalNode], start_service: Callable[..., ServiceProcess]
) -> None:
    env = {"REDIS_NODES": ",".join(n.url for n in two_nodes), "BATCH_INTERVAL_SECONDS": "3600"}
    service = start_service(env)
    with httpx.Client(base_url=service.url) as client:
        for i in range(50):
            assert client.post(f"/api/v1/vote/{i % 5}", json={"option_id": "A"}).status_code == 200
    assert all(stored_counts(n, str(p)) == {} for n in two_nodes for p in range(5))
    service.process.send_signal(signal.SIGTERM)
    output = service.finish()
    assert service.process.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
    assert "flush: 50 votes, 5 polls" in output
    for poll in range(5):
        assert sum(sum(stored_counts(n, str(poll)).values()) for n in two_nodes) == 10


def test_ctrl_c_flushes_too(
    start_node: Callable[..., LocalNode], start_service: Callable[..., ServiceProcess]
) -> None:
    node = start_node()
    service = start_service({"REDIS_NODES": node.url, "BATCH_INTERVAL_SECONDS": "3600"})
    httpx.post(f"{service.url}/api/v1/vote/p", json={"option_id": "B"})
    service.process.send_signal(signal.SIGINT)
    service.finish()
    assert stored_counts(node, "p") == {"B": 1}


def test_restarted_service_finds_earlier_votes(
    start_node: Callable[..., LocalNode], start_service: Callable[..., ServiceProcess]
) -> None:
    node = start_node()
    env = {"REDIS_NODES": node.url}
    first = start_service(env)
    httpx.post(f"{first.url}/api/v1/vote/p", json={"option_id": "A"})
    first.terminate()
    second = start_service(env)
    assert httpx.get(f"{second.url}/api/v1/results/p").json()["results"] == {"A": 1}


def test_node_restarted_with_its_append_only_file_keeps_counts(
    start_node: Callable[..., LocalNode], start_service: Callable[..., ServiceProcess]
) -> None:
    node = start_node(persist=True)
    service = start_service({"REDIS_NODES": node.url, "BATCH_INTERVAL_SECONDS": "3600"})
    for _ in range(3):
        httpx.post(f"{service.url}/api/v1/vote/p", json={"option_id": "A"})
    service.terminate()
    node.stop()
    node.start()
    assert stored_counts(node, "p") == {"A": 3}


def test_bad_setting_stops_start_up_naming_it() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", "from app.main import create_app; create_app()"],
        env={"REDIS_NODES": "http://nope", "PATH": ""},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "REDIS_NODES" in result.stderr


def test_two_workers_each_flush_their_own_votes_exactly(
    two_nodes: list[LocalNode], start_service: Callable[..., ServiceProcess]
) -> None:
    env = {"REDIS_NODES": ",".join(n.url for n in two_nodes), "BATCH_INTERVAL_SECONDS": "0.2"}
    service = start_service(env, workers=2)
    with httpx.Client(base_url=service.url) as client:
        for i in range(200):
            assert client.post(f"/api/v1/vote/{i % 8}", json={"option_id": "A"}).status_code == 200
    output = service.terminate()
    assert output.count("started: nodes") == 2  # two workers, each with its own flusher
    for poll in range(8):
        assert sum(sum(stored_counts(n, str(poll)).values()) for n in two_nodes) == 25
