"""What a start logs, from a real service process: a fresh start's ring check is one line
(the scan's totals), not a line per node and key pattern; a start with no node reachable
says so as a WARNING naming every node."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from app.devtools.local_nodes import LocalNode, free_port
from tests.cluster_helpers import wait_until
from tests.conftest import ServiceProcess


def test_a_fresh_start_logs_its_scan_in_one_line(
    two_nodes: list[LocalNode], start_service: Callable[..., ServiceProcess]
) -> None:
    service = start_service({"REDIS_NODES": ",".join(n.url for n in two_nodes)})

    def moved() -> bool:
        health = httpx.get(f"{service.url}/api/v1/health").json()
        return bool(health["rebalance"]["state"] == "done")

    wait_until(moved, "the first start's scan over")
    lines = service.terminate().splitlines()
    scanned = [line for line in lines if "keys scanned" in line]
    assert len(scanned) == 1, lines
    assert "rebalance: done in" in scanned[0] and "0 of 0 polls moved" in scanned[0]
    assert not [line for line in lines if "WARNING" in line and "reachable" in line]


def test_a_start_with_no_node_reachable_warns_naming_them(
    start_service: Callable[..., ServiceProcess],
) -> None:
    nowhere = [f"redis://127.0.0.1:{free_port()}" for _ in range(2)]  # nothing listens there
    service = start_service({"REDIS_NODES": ",".join(nowhere)})
    lines = service.terminate().splitlines()
    [warning] = [line for line in lines if "started with no node reachable" in line]
    assert " WARNING " in warning
    for url in nowhere:
        assert url in warning
