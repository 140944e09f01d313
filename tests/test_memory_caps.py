"""DESIGN.md invariant 5: a flood of distinct poll ids cannot grow memory without bound."""

from __future__ import annotations

from app.core import consistent_hash
from app.core.consistent_hash import HashRing
from tests.conftest import running_app, settings_for


async def test_flood_of_reads_keeps_the_cache_and_option_sets_capped() -> None:
    settings = settings_for(None, cache_max_polls=50)
    async with running_app(settings) as (client, service):
        for i in range(300):
            await client.post(f"/api/v1/vote/v{i}", json={"option_id": "A"})
            assert (await client.get(f"/api/v1/results/r{i}")).status_code == 200
        assert len(service.cache) == 50
        assert len(service.options) <= 50


async def test_flood_of_votes_stops_at_the_backlog_cap() -> None:
    async with running_app(settings_for(None, max_pending_pairs_per_node=100)) as (client, service):
        statuses = [
            (await client.post(f"/api/v1/vote/{i}", json={"option_id": "A"})).status_code
            for i in range(150)
        ]
        assert statuses.count(200) == 100 and statuses.count(503) == 50
        assert service.buffers["in_memory"].polls == 100


def test_ring_memo_is_bounded() -> None:
    ring = HashRing(["a", "b"])
    for i in range(consistent_hash.MEMO_LIMIT + 1_000):
        ring.get_node(f"poll-{i}")
    assert len(ring._memo) <= consistent_hash.MEMO_LIMIT


async def test_cache_keeps_the_most_recently_stored_polls() -> None:
    async with running_app(settings_for(None, cache_max_polls=2)) as (client, service):
        for poll in ["a", "b", "c"]:
            await client.get(f"/api/v1/results/{poll}")
        assert service.cache.any("a") is None
        assert service.cache.any("b") is not None and service.cache.any("c") is not None


def test_a_held_pair_costs_no_more_than_the_budget_says() -> None:
    """The worst shape: 64-character ids, one option per poll, then batched for a flush."""
    import tracemalloc

    from app.services.flusher import Flusher
    from app.services.health_report import BYTES_PER_PAIR
    from app.services.vote_buffer import VoteBuffer
    from app.storage.memory import MemoryStore

    pairs = 20_000
    tracemalloc.start()
    try:
        buffer = VoteBuffer()
        for i in range(pairs):
            buffer.add(f"{i:064d}", f"{i:064d}")
        flusher = Flusher(MemoryStore(), {"n": buffer}, 1.0, lambda batch: None)
        batches = flusher.next_batches("n", buffer.swap())
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(b.pairs for b in batches) == pairs
    print(f"\nheld pair: {used / pairs:.0f} bytes (budget {BYTES_PER_PAIR})")
    assert used / pairs <= BYTES_PER_PAIR
