"""A Redis Cluster of local masters on loopback, built with plain commands (the bundled
`valkey-server` ships no cli): `CLUSTER ADDSLOTSRANGE` and `CLUSTER MEET`. Also moves one
slot between masters the way an operator's resharding does (`CLUSTER SETSLOT ... IMPORTING`
/ `MIGRATING`, `MIGRATE` key by key batch, `SETSLOT ... NODE`). Used by the tests, the
benchmark and `make run CLUSTER=1`."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from app.devtools.local_nodes import LocalNode, free_port

SLOTS = 16384
MIGRATE_BATCH = 100  # keys per MIGRATE call


def _client(node: LocalNode) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=node.port, decode_responses=True)


@dataclass
class LocalCluster:
    """`masters` servers with cluster mode on, the slots split evenly between them; with
    `replicas`, that many replicas of each master (`CLUSTER REPLICATE`), kept apart in
    `replica_nodes` (`nodes` are the masters as started). The masters numbered in
    `forgetful` run with no persistence (`--appendonly no`): restarted, they come back
    empty, still owning their slots."""

    masters: int = 3
    data_dir: Path | None = None
    ports: list[int] = field(default_factory=list)  # empty: free ports, bus ports too
    nodes: list[LocalNode] = field(default_factory=list)
    replicas: int = 0
    node_timeout_ms: int = 5000
    appendfsync: str = "everysec"  # tests take "always": WAITAOF then answers at once
    replica_nodes: list[LocalNode] = field(default_factory=list)
    forgetful: tuple[int, ...] = ()
    scratch: list[Path] = field(default_factory=list, repr=False)  # removed by stop()

    @property
    def url(self) -> str:
        """What `REDIS_CLUSTER_URL` takes: any one master; the client finds the others."""
        return self.nodes[0].url

    def start(self, timeout: float = 20.0) -> LocalCluster:
        try:
            for i in range(self.masters):
                self.nodes.append(self._start_node(i))
            if not self._formed():  # a restart on kept data finds its cluster formed
                self._assign_slots()
                self._meet()
            self.wait_ok(timeout)
            if self.replicas and not self.replica_nodes:
                self._add_replicas(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self, index: int) -> LocalNode:
        folder = (self.data_dir / f"master-{index}") if self.data_dir else None
        if folder is None:
            folder_made = Path(tempfile.mkdtemp(prefix="local-cluster-"))
            self.scratch.append(folder_made)
        config_dir = folder or folder_made
        config_dir.mkdir(parents=True, exist_ok=True)
        fixed = index < len(self.ports)
        port = self.ports[index] if fixed else free_port()
        bus = port + 10000 if fixed else free_port()
        args = ["--cluster-enabled", "yes", "--cluster-port", str(bus)]
        args += ["--cluster-config-file", str(config_dir.resolve() / "nodes.conf")]
        args += ["--cluster-node-timeout", str(self.node_timeout_ms)]
        args += ["--maxmemory-policy", "noeviction"]
        if folder is None:  # a replica's full sync writes an RDB file: not in our cwd
            args += ["--dir", str(config_dir.resolve())]
        forgetful = index in self.forgetful
        node = LocalNode(
            port, folder, extra_args=args, forgetful=forgetful, appendfsync=self.appendfsync
        )
        self.nodes.append(node)  # stopped by stop() even if it fails to start
        node.start()
        self.nodes.pop()
        return node

    def _formed(self) -> bool:
        with _client(self.nodes[0]) as client:
            info = str(client.execute_command("CLUSTER", "INFO"))
        return f"cluster_slots_assigned:{SLOTS}" in info

    def _assign_slots(self) -> None:
        share = SLOTS // self.masters
        for i, node in enumerate(self.nodes):
            first = i * share
            last = SLOTS - 1 if i == self.masters - 1 else first + share - 1
            with _client(node) as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)

    def _meet(self) -> None:
        with _client(self.nodes[0]) as client:
            for node in self.nodes[1:]:
                bus = node.extra_args[node.extra_args.index("--cluster-port") + 1]
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, bus)

    def _add_replicas(self, timeout: float) -> None:
        """Start the replicas, meet them, and make each replicate its master; returns once
        every master reports its replicas connected."""
        for index in range(self.masters, self.masters * (1 + self.replicas)):
            self.replica_nodes.append(self._start_node(index))
        with _client(self.nodes[0]) as client:
            for node in self.replica_nodes:
                bus = node.extra_args[node.extra_args.index("--cluster-port") + 1]
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, bus)
        self.wait_ok(timeout)
        ids = [self.node_id(m) for m in self.nodes]
        for n, node in enumerate(self.replica_nodes):
            with _client(node) as client:
                client.execute_command("CLUSTER", "REPLICATE", ids[n // self.replicas])
        deadline = time.monotonic() + timeout
        while not all(self._replicated(m) for m in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the replicas did not connect in {timeout}s")
            time.sleep(0.05)

    def _replicated(self, master: LocalNode) -> bool:
        """Its replicas are online and every master's slot map lists them."""
        with _client(master) as client:
            role = client.execute_command("ROLE")
        if len(role[2]) < self.replicas:
            return False
        master_id = self.node_id(master)
        for node in self.nodes:
            with _client(node) as client:
                lines = self._node_lines(client)
            if sum(1 for line in lines if line[3] == master_id) < self.replicas:
                return False
        return True

    def replica_of(self, master: LocalNode) -> LocalNode:
        """The (first) replica started for `master`."""
        return self.replica_nodes[self.nodes.index(master) * self.replicas]

    def wait_ok(self, timeout: float) -> None:
        """Until every master reports `cluster_state:ok` and knows every other master."""
        deadline = time.monotonic() + timeout
        while True:
            if all(self._settled(node) for node in self.nodes):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not settle in {timeout}s")
            time.sleep(0.05)

    def _settled(self, node: LocalNode) -> bool:
        with _client(node) as client:
            info = client.execute_command("CLUSTER", "INFO")
            text = info if isinstance(info, str) else str(info)
            known = len(self._node_lines(client))
        return "cluster_state:ok" in text and known == len(self.nodes) + len(self.replica_nodes)

    @staticmethod
    def _node_lines(client: redis.Redis) -> list[list[str]]:
        raw = client.execute_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]
        text = raw if isinstance(raw, str) else "\n".join(str(v) for v in raw)
        return [line.split() for line in text.strip().splitlines() if line.strip()]

    def node_id(self, node: LocalNode) -> str:
        with _client(node) as client:
            return str(client.execute_command("CLUSTER", "MYID"))

    def owner(self, slot: int) -> LocalNode:
        """The master that serves `slot`, as the first master sees it (found by its id: the
        port a master announces may be another, e.g. `cluster-announce-port` behind NAT)."""
        with _client(self.nodes[0]) as client:
            for line in self._node_lines(client):
                for part in line[8:]:
                    if part.startswith("["):
                        continue
                    first, _, last = part.partition("-")
                    if int(first) <= slot <= int(last or first):
                        return next(n for n in self.nodes if self.node_id(n) == line[0])
        raise LookupError(f"no master serves slot {slot}")

    def migrate_slot(
        self, slot: int, target: LocalNode, pause: float = 0.0, batch: int = MIGRATE_BATCH
    ) -> int:
        """Move `slot` to `target` while clients keep using it; returns the keys moved.
        `pause` waits between MIGRATE calls of `batch` keys (to keep the slot mid-move)."""
        source = self.owner(slot)
        if source is target:
            return 0
        source_id, target_id = self.node_id(source), self.node_id(target)
        moved = 0
        with _client(source) as src, _client(target) as dst:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch):
                try:
                    src.execute_command(
                        "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys
                    )
                except redis.ResponseError as exc:
                    if "BUSYKEY" not in str(exc):
                        raise
                    # Seen once in a full run, not understood yet: name the keys on both.
                    both = [k for k in keys if dst.execute_command("ASKING") and dst.exists(k)]
                    raise RuntimeError(f"slot {slot}: keys on both masters: {both}") from exc
                moved += len(keys)
                if pause:
                    time.sleep(pause)
            for node in (target, source, *[n for n in self.nodes if n not in (source, target)]):
                with _client(node) as client:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        return moved

    def stop(self) -> None:
        for node in [*self.nodes, *self.replica_nodes]:
            node.kill()
        for folder in self.scratch:
            shutil.rmtree(folder, ignore_errors=True)

    def kill(self) -> None:
        self.stop()
