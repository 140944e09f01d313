"""Health, and reads while a node is down."""

from __future__ import annotations

from tests.conftest import NodeFactory, running_app, settings_for


async def test_health_lists_each_node_without_password(start_node: NodeFactory) -> None:
    nodes = [start_node(password="s3cret"), start_node()]
    async with running_app(settings_for(nodes)) as (client, _):
        await client.post("/api/v1/vote/1", json={"option_id": "A"})
        r = await client.get("/api/v1/health")
        assert r.status_code == 200
        body = r.json()
        assert body["status"] == "ok"
        assert [n["label"] for n in body["nodes"]] == [f"redis_{n.port}" for n in nodes]
        assert all(n["reachable"] for n in body["nodes"])
        assert body["nodes"][0]["url"] == f"redis://:***@127.0.0.1:{nodes[0].port}"
        assert "s3cret" not in r.text
        assert body["buffer"]["pending_votes"] == 1


async def test_health_is_503_and_names_the_node_that_is_down(start_node: NodeFactory) -> None:
    nodes = [start_node(), start_node()]
    async with running_app(settings_for(nodes, shutdown_flush_seconds=0)) as (client, _):
        nodes[1].kill()
        r = await client.get("/api/v1/health")
        assert r.status_code == 503
        reach = {n["label"]: n["reachable"] for n in r.json()["nodes"]}
        assert reach == {f"redis_{nodes[0].port}": True, f"redis_{nodes[1].port}": False}


async def test_results_for_a_down_node_serve_the_cached_snapshot_marked_stale(
    start_node: NodeFactory,
) -> None:
    node = start_node()
    settings = settings_for([node], cache_ttl_seconds=5, shutdown_flush_seconds=0)
    async with running_app(settings) as (client, service):
        now = [0.0]
        service.cache.clock = lambda: now[0]
        await client.post("/api/v1/vote/p", json={"option_id": "A"})
        await client.post("/api/v1/vote/p", json={"option_id": "B"})
        await service.flusher.flush()
        assert (await client.get("/api/v1/results/p")).json()["served_via"] == "redis"
        node.kill()
        await client.post("/api/v1/vote/p", json={"option_id": "B"})
        now[0] += 60  # the snapshot is no longer fresh
        r = await client.get("/api/v1/results/p")
        assert r.status_code == 200
        assert r.json() == {
            "poll_id": "p",
            "results": {"A": 1, "B": 2},
            "served_via": "app_cache",
            "stale": True,
        }


async def test_results_for_a_down_node_without_snapshot_are_503_naming_it(
    start_node: NodeFactory,
) -> None:
    node = start_node(password="hunter2")
    settings = settings_for([node], cache_ttl_seconds=0, shutdown_flush_seconds=0)
    async with running_app(settings) as (client, _):
        node.kill()
        r = await client.get("/api/v1/results/p")
        assert r.status_code == 503
        assert "node redis " in r.json()["detail"] and "hunter2" not in r.text


async def test_other_nodes_keep_flushing_and_reading_while_one_is_down(
    start_node: NodeFactory,
) -> None:
    nodes = [start_node(), start_node()]
    settings = settings_for(nodes, cache_ttl_seconds=0, shutdown_flush_seconds=0)
    async with running_app(settings) as (client, service):
        down_label = f"redis_{nodes[1].port}"
        polls = [str(i) for i in range(40)]
        await service.register({poll: ["A"] for poll in polls})  # known before the node goes
        nodes[1].kill()
        for poll in polls:
            await client.post(f"/api/v1/vote/{poll}", json={"option_id": "A"})
        landed = await service.flusher.flush()
        up_polls = [p for p in polls if service.store.node_for(p) != down_label]
        assert landed == len(up_polls)
        for poll in up_polls:
            r = await client.get(f"/api/v1/results/{poll}")
            assert r.json()["results"] == {"A": 1}
        assert service.flusher.in_flight_votes(down_label) == len(polls) - len(up_polls)


async def test_health_counts_the_defined_polls_round_trips(start_node: NodeFactory) -> None:
    async with running_app(settings_for([start_node()], api_token="t")) as (client, _):
        options = [{"id": "A", "label": "a"}, {"id": "B", "label": "b"}]
        poll = {"poll_id": "d1", "question": "?", "options": options}
        created = await client.post(
            "/api/v1/polls", json=poll, headers={"Authorization": "Bearer t"}
        )
        assert created.status_code == 201
        for voter in ["v1", "v2"]:
            r = await client.post(
                "/api/v1/polls/d1/vote", json={"option_id": "A"}, headers={"X-Voter-Id": voter}
            )
            assert r.status_code == 200
        counters = (await client.get("/api/v1/health")).json()["counters"]
        assert counters["defined_votes_sent"] == 2
        assert 1 <= counters["defined_round_trips"] <= 2
