"""The stream path's per-poll tables stay bounded, and streams of polls that do not exist
cost (almost) no node reads (issue 17, item 4)."""

from __future__ import annotations

import asyncio
import gc

import pytest
import uvloop

from app.services.live_results import RECENT_POLLS, LiveResults, Snapshot
from app.services.stream_caps import StreamCaps
from tests.conftest import NodeFactory
from tests.sse import StreamClient
from tests.test_streams import define, live_app, stream_settings

DISTINCT_IDS = 300_000
BATCH = 100
BUDGET_KIB = 16 * 1024  # a leak of the 160 bytes an id would be 31 MiB here


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(600)  # 13-70 s on this shared machine; more when it is loaded
def test_300000_distinct_stream_ids_leave_memory_flat() -> None:
    uvloop.run(distinct_stream_ids())  # the service's event loop; twice as fast here


async def distinct_stream_ids() -> None:
    live = LiveResults(interval=0.5, caps=StreamCaps(total=BATCH, per_client=BATCH // 100))

    async def read() -> Snapshot:
        return Snapshot(b'{"results":{"A":1}}', 1, 1)

    async def watch(i: int) -> None:
        subscription = live.subscribe(f"adhoc:{i}", read, client=f"10.0.{i % 250}.{i % 200}")
        await subscription.first()
        subscription.close()

    rss = {}
    gc.collect()
    gc.freeze()  # as the service does after start-up (app.core.gc_tuning)
    for first in range(0, DISTINCT_IDS, BATCH):  # short-lived streams, BATCH at a time
        await asyncio.gather(*(watch(i) for i in range(first, first + BATCH)))
        if first + BATCH in (DISTINCT_IDS // 3, DISTINCT_IDS):
            await asyncio.sleep(0)  # the last publishers' tasks finish
            rss[first + BATCH] = rss_kib()
    gc.unfreeze()
    growth = rss[DISTINCT_IDS] - rss[DISTINCT_IDS // 3]
    print(f"\nRSS from {DISTINCT_IDS // 3:,} to {DISTINCT_IDS:,} stream ids: {growth:+,} KiB")
    assert growth < BUDGET_KIB
    assert len(live.reads) <= RECENT_POLLS and len(live.recent) <= RECENT_POLLS
    assert live.reads.total >= DISTINCT_IDS  # every id was read, and counted
    assert not live.publishers and not live.empty
    assert live.subscribers == 0 and not live.caps.by_client  # no client left in the table


async def test_streams_of_polls_without_votes_are_bounded_and_rarely_read(
    start_node: NodeFactory,
) -> None:
    settings = stream_settings([start_node()], stream_max_empty_polls=2)
    async with live_app(settings) as (app, client, live):
        await define(client, "clock")  # its publisher reads every interval: our clock
        clock = await StreamClient(app, "/api/v1/polls/clock/stream").start().answered()
        empty = [
            await StreamClient(app, f"/api/v1/results/nobody-{i}/stream").start().answered()
            for i in range(3)
        ]
        assert [s.status for s in empty] == [200, 200, 404]  # past the bound: 404
        assert empty[2].json()["type"] == "poll_not_found"
        before = live.reads["def:clock"]
        while live.reads["def:clock"] < before + 20:  # twenty intervals pass
            await asyncio.sleep(settings.stream_interval_seconds)
        intervals = live.reads["def:clock"] - before
        assert live.reads["adhoc:nobody-0"] <= 1 + intervals * live.interval / live.empty_interval
        assert live.reads["adhoc:nobody-0"] < intervals / 4  # not one read per interval
        for stream in (clock, *empty):
            await stream.close()
        assert not live.publishers and not live.empty
