"""`make run`: two local nodes on 7000 and 7001 (append-only files under `.data/`), and the
service on 8000 in front of them. Ctrl-C stops the service (which flushes) and then the nodes.
`make run CLUSTER=1`: a Redis Cluster of three masters on 7100-7102 instead (`.data/cluster`)."""

from __future__ import annotations

import os
from pathlib import Path

from app.cli import serve
from app.core.config import SettingsError, load_settings
from app.devtools.local_cluster import LocalCluster
from app.devtools.local_nodes import LocalNode

DATA_DIR = Path(os.environ.get("LOCAL_DATA_DIR", ".data"))
NODE_PORTS = (7000, 7001)
CLUSTER_PORTS = [7100, 7101, 7102]


def run_on_cluster(port: int) -> None:
    cluster = LocalCluster(3, DATA_DIR / "cluster", CLUSTER_PORTS)
    os.environ["REDIS_CLUSTER_URL"] = f"redis://127.0.0.1:{CLUSTER_PORTS[0]}"
    os.environ.setdefault("JOURNAL_DIR", str(DATA_DIR / "journal-cluster"))
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise SystemExit(str(exc)) from None
    try:
        cluster.start()
        print(f"cluster of 3 masters on ports {CLUSTER_PORTS} (data in {cluster.data_dir})")
        print(f"service on http://127.0.0.1:{port}; Ctrl-C stops everything")
        serve("127.0.0.1", port, settings.workers)
    finally:
        for node in cluster.nodes:
            node.stop()
        print("cluster stopped")


def main() -> None:
    port = int(os.environ.get("PORT", "8000"))
    if os.environ.get("CLUSTER", "") not in ("", "0"):
        return run_on_cluster(port)
    nodes = [LocalNode(p, DATA_DIR / f"node-{p}") for p in NODE_PORTS]
    os.environ["REDIS_NODES"] = ",".join(f"redis_{n.port}={n.url}" for n in nodes)
    os.environ.setdefault("JOURNAL_DIR", str(DATA_DIR / "journal"))
    os.environ.setdefault("JOURNAL_FSYNC", "everysec")
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise SystemExit(str(exc)) from None
    started: list[LocalNode] = []
    try:
        for node in nodes:
            started.append(node.start())
            print(f"node redis_{node.port} listening on {node.url} (data in {node.data_dir})")
        print(f"service on http://127.0.0.1:{port}  (docs: http://127.0.0.1:{port}/docs)")
        print(f"journal: {settings.journal_dir} (fsync {settings.journal_fsync})")
        print(f"workers: {settings.workers}; Ctrl-C stops everything")
        serve("127.0.0.1", port, settings.workers)
    finally:
        for node in started:
            node.stop()
            print(f"node redis_{node.port} stopped")


if __name__ == "__main__":
    main()
