"""GET /metrics: Prometheus' text format, figures read from the running service."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.devtools.local_nodes import LocalNode
from tests.conftest import NodeFactory, ServiceProcess, running_app, settings_for

TOKEN = "tok"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
POLL = {
    "poll_id": "talk",
    "question": "Next?",
    "options": [{"id": "A", "label": "a"}, {"id": "B", "label": "b"}],
}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and want <= set(lbl))


def scrape_until(url: str, done: Callable[[Samples], bool], timeout: float = 20.0) -> Samples:
    """Scrape until `done` holds (the flusher runs on its own in a real process)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = parse(httpx.get(f"{url}/metrics").text)
        if done(samples) or time.monotonic() > deadline:
            return samples


@pytest.mark.parametrize("fast_path", ["true", "false"])
def test_a_running_service_exports_its_figures(
    two_nodes: list[LocalNode],
    start_service: Callable[..., ServiceProcess],
    tmp_path: Path,
    fast_path: str,
) -> None:
    service = start_service(
        {
            "REDIS_NODES": ",".join(n.url for n in two_nodes),
            "BATCH_MAX_VOTES": "1",  # every vote wakes the flusher
            "JOURNAL_DIR": str(tmp_path / "journal"),
            "JOURNAL_FSYNC": "always",
            "API_TOKEN": TOKEN,
            "FAST_VOTE_PATH": fast_path,
        }
    )
    with httpx.Client(base_url=service.url) as client:
        for i in range(6):
            assert client.post(f"/api/v1/vote/p{i}", json={"option_id": "A"}).status_code == 200
        entries = [{"poll_id": "b", "option_id": "X", "count": 4}]
        assert client.post("/api/v1/votes", json=entries, headers=AUTH).status_code == 200
        keyed = {"Idempotency-Key": "k1"}
        assert client.post("/api/v1/vote/k", json={"option_id": "A"}, headers=keyed).is_success
        assert client.post("/api/v1/polls", json=POLL, headers=AUTH).status_code == 201
        ann = {"X-Voter-Id": "ann"}
        first = client.post("/api/v1/polls/talk/vote", json={"option_id": "A"}, headers=ann)
        assert first.status_code == 200
        again = client.post("/api/v1/polls/talk/vote", json={"option_id": "A"}, headers=ann)
        assert again.status_code == 409
        assert client.post("/api/v1/vote/p", json={"option": "A"}).status_code == 422
        assert client.post("/api/v1/vote/p", json={"option_id": "A" * 65}).status_code == 422
        assert client.post("/api/v1/votes", json=entries).status_code == 401
        client.get("/api/v1/results/p0")
        client.get("/api/v1/results/p0")

    def flushed(s: Samples) -> bool:
        held = total(s, "polling_pending_votes") + total(s, "polling_in_flight_votes")
        return held == 0 and total(s, "polling_flushes_total") >= 1

    s = scrape_until(service.url, flushed)
    assert flushed(s)
    accepted = "polling_votes_accepted_total"
    assert total(s, accepted, path="adhoc") == 6
    assert total(s, accepted, path="bulk") == 4
    assert total(s, accepted, path="keyed") == 1
    assert total(s, accepted, path="defined") == 1
    rejected = "polling_votes_rejected_total"
    assert total(s, rejected, path="adhoc", reason="invalid") == 2
    assert total(s, rejected, path="bulk", reason="unauthorized") == 1
    assert total(s, rejected, path="defined", reason="already_voted") == 1
    assert total(s, rejected) == 4
    labels = {"redis_" + str(n.port) for n in two_nodes}
    up = {dict(lbl)["node"]: v for (n, lbl), v in s.items() if n == "polling_node_up"}
    assert up == dict.fromkeys(labels, 1.0)
    assert total(s, "polling_batch_retries_total") == 0
    assert total(s, "polling_flush_duration_seconds_count") == total(s, "polling_flushes_total")
    assert total(s, "polling_journal_fsync_duration_seconds_count") >= 1
    assert total(s, "polling_cache_misses_total") == 1
    assert total(s, "polling_cache_hits_total") == 1
    assert total(s, "polling_defined_votes_sent_total") == 2
    assert 1 <= total(s, "polling_defined_round_trips_total") <= 2
    assert ("polling_stream_subscribers", ()) in s


async def test_a_node_that_is_down_shows_and_its_batches_are_retried(
    start_node: NodeFactory,
) -> None:
    nodes = [start_node(), start_node()]
    async with running_app(settings_for(nodes)) as (client, service):
        for i in range(20):
            await client.post(f"/api/v1/vote/p{i}", json={"option_id": "A"})
        down = nodes[0]
        down_label = f"redis_{down.port}"
        down.stop()
        await service.flusher.flush()
        s = parse((await client.get("/metrics")).text)
        assert total(s, "polling_node_up", node=down_label) == 0
        assert total(s, "polling_node_up") == 1  # the other one
        held = total(s, "polling_in_flight_votes", node=down_label)
        assert held > 0 and total(s, "polling_pending_votes") == 0
        await service.flusher.flush()  # still down: a retry
        down.start()
        await service.flusher.flush()  # back: the retry lands
        s = parse((await client.get("/metrics")).text)
        assert total(s, "polling_batch_retries_total", node=down_label) == 2
        assert total(s, "polling_node_up") == 2
        assert total(s, "polling_in_flight_votes") == 0
        assert total(s, "polling_votes_accepted_total") == 20


async def test_apps_in_one_process_keep_their_own_figures() -> None:
    async with (
        running_app(settings_for(None)) as (first, _),
        running_app(settings_for(None)) as (second, _),
    ):
        await first.post("/api/v1/vote/p", json={"option_id": "A"})
        s1 = parse((await first.get("/metrics")).text)
        s2 = parse((await second.get("/metrics")).text)
    assert total(s1, "polling_votes_accepted_total") == 1
    assert total(s2, "polling_votes_accepted_total") == 0
