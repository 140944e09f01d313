"""What the parts of `make bench` share, and running one of them alone
(`python -m bench.fanout`, `bench.instances`, `bench.cluster`, `bench.migrate`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from app.devtools.local_nodes import LocalNode, free_port

TOKEN = "bench-token"
Log = Callable[[str], None]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def on_two_nodes(
    measure: Callable[[list[LocalNode], str, Log], dict[str, Any]],
) -> dict[str, Any]:
    """Run one part on two local nodes of its own, stopped afterwards."""
    nodes = [LocalNode(free_port()).start(), LocalNode(free_port()).start()]
    try:
        return measure(nodes, TOKEN, log)
    finally:
        for node in nodes:
            node.kill()
