"""`localhost`, `127.0.0.1` and `[::1]` name one server in the ring records: a start that
writes the other name than the nodes recorded is not refused, and keeps every vote; another
loopback address (127.0.0.2) is another server, and is refused (docs/operations.md, "One
server, several names")."""

from __future__ import annotations

import json

import pytest
import redis

from app.core.nodes import server_identity
from app.devtools.local_nodes import LocalNode
from app.services.errors import RebalanceBlocked
from tests.conftest import running_app, settings_for


def test_loopback_names_and_the_default_port_are_one_identity() -> None:
    same = ["redis://localhost:7000", "redis://127.0.0.1:7000", "redis://[::1]:7000"]
    assert {server_identity(url) for url in same} == {"redis://127.0.0.1:7000"}
    assert server_identity("redis://LocalHost") == server_identity("redis://127.0.0.1:6379")
    assert server_identity("redis://u:***@localhost:1") == "redis://127.0.0.1:1"
    others = ["redis://127.0.0.2:7000", "rediss://127.0.0.1:7000", "redis://127.0.0.1:7001"]
    assert len({server_identity(url) for url in [same[0], *others]}) == 4


def urls(nodes: list[LocalNode], host: str) -> str:
    return ",".join(f"redis://{host}:{node.port}" for node in nodes)


async def test_a_ring_recorded_as_localhost_starts_as_127_0_0_1_with_every_vote(
    two_nodes: list[LocalNode],
) -> None:
    async with running_app(settings_for(None, redis_nodes=urls(two_nodes, "localhost"))) as (
        client,
        service,
    ):
        assert service.migration is not None
        await service.migration.wait()  # no ring recorded yet: this records it
        for poll in range(20):
            assert (await client.post(f"/api/v1/vote/{poll}", json={"option_id": "A"})).is_success
    with redis.Redis(port=two_nodes[0].port, decode_responses=True) as node:
        assert "localhost" in node.get("ring:config")
    async with running_app(settings_for(None, redis_nodes=urls(two_nodes, "127.0.0.1"))) as (
        client,
        service,
    ):
        assert service.migration is not None
        await service.migration.wait()
        for poll in range(20):
            results = (await client.get(f"/api/v1/results/{poll}")).json()["results"]
            assert results == {"A": 1}


@pytest.mark.parametrize(("recorded", "refused"), [("[::1]", False), ("127.0.0.2", True)])
async def test_a_record_naming_another_loopback_spelling_is_the_same_server(
    two_nodes: list[LocalNode], recorded: str, refused: bool
) -> None:
    labels = [f"redis_{node.port}" for node in two_nodes]
    named = dict(zip(labels, urls(two_nodes, recorded).split(","), strict=True))
    ring = {"virtual_nodes": 100, "nodes": named}
    for node in two_nodes:
        with redis.Redis(port=node.port) as client:
            client.set("ring:config", json.dumps(ring, sort_keys=True))
    settings = settings_for(None, redis_nodes=urls(two_nodes, "127.0.0.1"))
    if refused:
        with pytest.raises(RebalanceBlocked, match=r"127\.0\.0\.2"):
            async with running_app(settings):
                pass
        return
    async with running_app(settings) as (client, _):
        assert (await client.post("/api/v1/vote/p", json={"option_id": "A"})).is_success
