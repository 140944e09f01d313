"""`make run`: local nodes (append-only files under `.data/`) and the service on 8000 in front
of them. Ctrl-C stops the service (which flushes) and then the nodes.

Which nodes it starts:
- `REDIS_NODES` not set (neither in the environment nor in `.env`): `NODES` of them (default
  2) on 7000, 7001, ..., labelled `redis_<port>`, which is what the default `REDIS_NODES`
  names; `make run NODES=3` adds `redis_7002`;
- `REDIS_NODES` set: it is used as it is. Each node it or `REDIS_RETIRING_NODES` names on
  this machine (`localhost`, `127.0.0.1`, `[::1]`) is started on its port; a node elsewhere
  is used as it is. Empty: the in-memory store, no node.
`make run CLUSTER=1`: a Redis Cluster of three masters on 7100-7102 instead (`.data/cluster`).
`make rebalance ARGS=--dry-run` starts the same nodes for `app/rebalance.py`, then stops them
(the command wants no instance running, so `make run` is stopped and so are its nodes).

A start that cannot go on (a bad setting, a port in use, a node that does not come up, a
refusal of the service's own) is one line on stderr and a non-zero exit, with every node
it started stopped again.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import unquote

from app import rebalance as rebalance_command
from app.cli import serve
from app.core.config import Settings, SettingsError, load_settings
from app.core.nodes import LOOPBACK_HOSTS, NodeSpec, split_url
from app.devtools.local_cluster import LocalCluster
from app.devtools.local_nodes import LocalNode, port_in_use

DATA_DIR = Path(os.environ.get("LOCAL_DATA_DIR", ".data"))
FIRST_NODE_PORT = 7000
MAX_NODES = 16
CLUSTER_PORTS = [7100, 7101, 7102]


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise SystemExit(str(exc)) from None


def default_nodes(count: str) -> str:
    """`REDIS_NODES` for `NODES` local nodes from 7000 up, labelled as the default's are."""
    if not (count.isascii() and count.isdigit() and 1 <= int(count) <= MAX_NODES):
        raise SystemExit(f"NODES must be a whole number from 1 to {MAX_NODES}, not {count!r}")
    ports = range(FIRST_NODE_PORT, FIRST_NODE_PORT + int(count))
    return ",".join(f"redis_{port}=redis://127.0.0.1:{port}" for port in ports)


def local_node(spec: NodeSpec) -> LocalNode | None:
    """The node to start for a configured one on this machine; None for one elsewhere."""
    url = split_url(spec.url)
    if url.host.lower() not in LOOPBACK_HOSTS:
        return None
    password = None
    if url.userinfo is not None:  # `user:password` or a lone password (as redis-py takes it)
        password = unquote(url.userinfo.partition(":")[2] or url.userinfo)
    port = int(url.port or 6379)
    # appendfsync always: the service waits (WAITAOF) for each write to be on disk before
    # it answers a defined vote; with everysec that wait lasts until the node's next
    # second (docs/operations.md, "Node fsync")
    return LocalNode(port, DATA_DIR / f"node-{port}", password, appendfsync="always")


def run_on_cluster(port: int) -> None:
    cluster = LocalCluster(3, DATA_DIR / "cluster", CLUSTER_PORTS, appendfsync="always")
    os.environ["REDIS_CLUSTER_URL"] = f"redis://127.0.0.1:{CLUSTER_PORTS[0]}"
    os.environ.setdefault("JOURNAL_DIR", str(DATA_DIR / "journal-cluster"))
    settings = settings_or_exit()
    try:
        try:
            cluster.start()
        except RuntimeError as exc:
            raise SystemExit(f"make run: {exc}") from None
        print(f"cluster of 3 masters on ports {CLUSTER_PORTS} (data in {cluster.data_dir})")
        print(f"service on http://127.0.0.1:{port}; Ctrl-C stops everything")
        serve("127.0.0.1", port, settings.workers)
    finally:
        for node in cluster.nodes:
            node.stop()
        print("cluster stopped")


def start_nodes(settings: Settings, started: list[tuple[str, LocalNode]]) -> None:
    """Start the local nodes the settings name (ring and retiring), appending each to
    `started` as it comes up, so the caller stops them whatever happens next."""
    for spec in [*settings.nodes, *settings.retiring_nodes]:
        node = local_node(spec)
        if node is None:
            print(f"node {spec.label} at {spec.safe_url}: not on this machine, used as it is")
            continue
        try:
            started.append((spec.label, node.start()))
        except RuntimeError as exc:
            raise SystemExit(f"make run: node {spec.label}: {exc}") from None
        print(f"node {spec.label} listening on {spec.safe_url} (data in {node.data_dir})")


def node_settings() -> Settings:
    """The settings, with `REDIS_NODES` filled in from `NODES` when the user set none."""
    settings = settings_or_exit()
    if "redis_nodes" in settings.model_fields_set:
        if os.environ.get("NODES"):
            print("NODES is not used: REDIS_NODES names the nodes")
        return settings
    os.environ["REDIS_NODES"] = default_nodes(os.environ.get("NODES") or "2")
    return settings_or_exit()


def main(argv: list[str] | None = None) -> None:
    """`make run`; `make rebalance ARGS=...` is `main(["rebalance", ...])`: the same nodes,
    started for the command (`app/rebalance.py`) alone, then stopped."""
    argv = sys.argv[1:] if argv is None else argv
    rebalance = argv[:1] == ["rebalance"]
    if rebalance and {"-h", "--help"} & set(argv[1:]):
        return rebalance_command.main(argv[1:])  # the help alone: no node started for it
    port = int(os.environ.get("PORT", "8000"))
    if not rebalance and port_in_use(port):
        raise SystemExit(
            f"make run: port {port} is already in use; stop what listens there, or set PORT"
        )
    if os.environ.get("CLUSTER", "") not in ("", "0"):
        if rebalance:  # nothing of ours to move on a cluster: the command says so
            os.environ["REDIS_CLUSTER_URL"] = f"redis://127.0.0.1:{CLUSTER_PORTS[0]}"
            return rebalance_command.main(argv[1:])
        return run_on_cluster(port)
    os.environ.setdefault("JOURNAL_DIR", str(DATA_DIR / "journal"))
    os.environ.setdefault("JOURNAL_FSYNC", "everysec")
    settings = node_settings()
    started: list[tuple[str, LocalNode]] = []
    try:
        start_nodes(settings, started)
        if rebalance:
            return rebalance_command.main(argv[1:])
        if not settings.nodes:
            print("no nodes: the in-memory store (REDIS_NODES is empty)")
        print(f"service on http://127.0.0.1:{port}  (docs: http://127.0.0.1:{port}/docs)")
        print(f"journal: {settings.journal_dir or 'off'} (fsync {settings.journal_fsync})")
        print(f"workers: {settings.workers}; Ctrl-C stops everything")
        serve("127.0.0.1", port, settings.workers)
    finally:
        for label, node in started:
            node.stop()
            print(f"node {label} stopped")


if __name__ == "__main__":
    main()
