"""Crash durability: the write-ahead journal, tested by killing the service with SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from app.core.config import load_settings
from app.devtools.local_nodes import LocalNode
from app.storage.base import Applied, Batch, NodeUnavailable
from tests.conftest import NodeFactory, ServiceProcess, running_app, settings_for, stored_counts
from tests.proxies import ReplyCuttingProxy

StartService = Callable[..., ServiceProcess]


def crash(service: ServiceProcess) -> None:
    os.killpg(service.process.pid, signal.SIGKILL)
    service.finish()


async def vote_concurrently(
    url: str, polls: int, voters: int, votes_each: int
) -> tuple[Counter[tuple[str, str]], int]:
    """Returns the acknowledged votes per (poll, option) and how many got no answer."""
    acknowledged: Counter[tuple[str, str]] = Counter()
    unanswered = 0

    async def voter(seed: int) -> None:
        nonlocal unanswered
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            for i in range(votes_each):
                poll, option = f"p{(seed * 7 + i) % polls}", "ABCD"[(seed + i) % 4]
                try:
                    r = await client.post(f"/api/v1/vote/{poll}", json={"option_id": option})
                except httpx.HTTPError:
                    unanswered += 1
                    return
                if r.status_code == 200:
                    acknowledged[poll, option] += 1

    await asyncio.gather(*(voter(s) for s in range(voters)))
    return acknowledged, unanswered


def stored_everywhere(nodes: list[LocalNode], poll: str) -> dict[str, int]:
    total: Counter[str] = Counter()
    for node in nodes:
        total.update(stored_counts(node, poll))
    return dict(total)


@pytest.mark.parametrize("fsync", ["always", "everysec", "off"])
async def test_kill_9_after_acknowledging_loses_nothing(
    fsync: str, two_nodes: list[LocalNode], start_service: StartService, tmp_path: Path
) -> None:
    env = {
        "REDIS_NODES": ",".join(n.url for n in two_nodes),
        "BATCH_INTERVAL_SECONDS": "0.2",
        "JOURNAL_DIR": str(tmp_path / "journal"),
        "JOURNAL_FSYNC": fsync,
    }
    service = start_service(env)
    acknowledged, unanswered = await vote_concurrently(service.url, 10, 20, 40)
    assert unanswered == 0
    crash(service)  # whatever was flushed, sealed or only journaled at this moment
    start_service(env).terminate()  # recovery, then a graceful stop that flushes
    for poll in {p for p, _ in acknowledged}:
        expected = {o: n for (p, o), n in acknowledged.items() if p == poll}
        assert stored_everywhere(two_nodes, poll) == expected


async def test_kill_9_under_load_keeps_every_acknowledged_vote(
    two_nodes: list[LocalNode], start_service: StartService, tmp_path: Path
) -> None:
    env = {
        "REDIS_NODES": ",".join(n.url for n in two_nodes),
        "BATCH_INTERVAL_SECONDS": "0.1",
        "JOURNAL_DIR": str(tmp_path / "journal"),
        "JOURNAL_FSYNC": "always",
    }
    service = start_service(env)
    load = asyncio.create_task(vote_concurrently(service.url, 10, 30, 10_000))
    landed = 0
    while landed < 2_000:  # crash mid-load, once several batches have landed
        await asyncio.sleep(0.02)
        landed = sum(sum(stored_everywhere(two_nodes, f"p{i}").values()) for i in range(10))
    crash(service)
    acknowledged, unanswered = await load
    assert unanswered > 0  # the crash cut requests off
    start_service(env).terminate()
    total_stored = sum(sum(stored_everywhere(two_nodes, f"p{i}").values()) for i in range(10))
    for (poll, option), n in acknowledged.items():
        assert stored_everywhere(two_nodes, poll).get(option, 0) >= n
    # at most the requests cut off by the crash were counted without an answer
    assert sum(acknowledged.values()) <= total_stored <= sum(acknowledged.values()) + unanswered


async def test_crash_after_the_node_applied_a_batch_does_not_double_it(
    start_node: NodeFactory, start_service: StartService, tmp_path: Path
) -> None:
    node = start_node()
    proxy = await ReplyCuttingProxy(node.port).start()
    proxy.cuts_left = 1_000_000  # every batch reaches the node; no confirmation comes back
    journal = {"JOURNAL_DIR": str(tmp_path / "journal"), "JOURNAL_FSYNC": "always"}
    try:
        env = {"REDIS_NODES": f"n={proxy.url}", "BATCH_INTERVAL_SECONDS": "0.1", **journal}
        service = start_service(env)
        acknowledged, _ = await vote_concurrently(service.url, 3, 5, 20)
        while proxy.cuts_done < 2:  # the node holds a batch, applied once and retried once
            await asyncio.sleep(0.02)  # but the service has no confirmation of it
        assert 0 < sum(sum(stored_counts(node, f"p{i}").values()) for i in range(3)) <= 100
        crash(service)
    finally:
        await proxy.stop()
    env = {"REDIS_NODES": f"n={node.url}", "BATCH_INTERVAL_SECONDS": "0.1", **journal}
    output = start_service(env).terminate()
    assert "recovered 100 votes" in output
    for poll in ("p0", "p1", "p2"):
        assert stored_counts(node, poll) == {
            o: n for (p, o), n in acknowledged.items() if p == poll
        }


async def test_graceful_stop_with_a_node_down_keeps_its_votes_for_the_next_start(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    node = start_node(persist=True)
    settings = settings_for(
        [node], journal_dir=str(tmp_path / "j"), journal_fsync="everysec", shutdown_flush_seconds=0
    )
    async with running_app(settings) as (client, _):
        for _ in range(3):
            await client.post("/api/v1/vote/p", json={"option_id": "A"})
        node.stop()
    node.start()
    assert stored_counts(node, "p") == {}
    async with running_app(settings) as (client, service):
        assert (await client.get("/api/v1/results/p")).json()["results"] == {"A": 3}
        await service.flusher.flush()
    assert stored_counts(node, "p") == {"A": 3}
    assert not list((tmp_path / "j").glob("slot-*/*.json")) + list(
        (tmp_path / "j").glob("slot-*/*.log")
    )


async def test_two_processes_sharing_a_journal_folder_take_different_slots(
    tmp_path: Path,
) -> None:
    settings = settings_for(None, journal_dir=str(tmp_path / "j"))
    async with running_app(settings) as (_, first), running_app(settings) as (_, second):
        assert first.journal and second.journal
        assert first.journal.directory != second.journal.directory


async def test_batches_for_a_node_no_longer_configured_go_where_their_polls_are_now(
    start_node: NodeFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = start_node()
    slot = tmp_path / "j" / "slot-0"
    slot.mkdir(parents=True)
    batch = {"flusher_id": "old", "seq": 1, "node": "gone", "counts": {"p": {"A": 2}}}
    sealed = slot / "sealed-old-1.json"
    sealed.write_text(json.dumps({"segments": [], "batches": [batch]}))
    settings = settings_for([node], journal_dir=str(tmp_path / "j"))
    async with running_app(settings) as (client, _):
        assert (await client.get("/api/v1/results/p")).json()["results"] == {"A": 2}
    assert not sealed.exists()
    assert stored_counts(node, "p") == {"A": 2}
    assert "2 votes were for node gone, which is no longer configured" in caplog.text


async def test_adding_a_node_keeps_the_journaled_votes_of_the_renamed_one(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    """One unlabelled node is `redis`; with two they are `redis_<port>`: same server."""
    first, second = start_node(persist=True), start_node()
    settings = settings_for([first], journal_dir=str(tmp_path / "j"), shutdown_flush_seconds=0)
    async with running_app(settings) as (client, _):
        for _ in range(3):
            await client.post("/api/v1/vote/p", json={"option_id": "A"})
        first.stop()  # down at the graceful stop: the votes stay sealed in the journal
    first.start()
    grown = settings_for([first, second], journal_dir=str(tmp_path / "j"))
    async with running_app(grown) as (_, service):
        owner = service.store.node_for("p")
        assert service.migration is not None
        await service.migration.wait()  # the batch went to the same server; then it moved
    on = first if owner == f"redis_{first.port}" else second
    assert stored_counts(on, "p") == {"A": 3}


async def test_a_renamed_nodes_journal_batch_that_had_landed_counts_once(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    """As above, but the batch had landed on the node (its reply lost): recovery sends it to
    the same server under its new label, whose mark says so, and the move carries it."""
    first, second = start_node(persist=True), start_node()
    polls = [str(p) for p in range(40)]  # some of them move to the second node
    settings = settings_for([first], journal_dir=str(tmp_path / "j"), shutdown_flush_seconds=0)
    async with running_app(settings) as (client, service):
        for poll_id in polls:
            await client.post(f"/api/v1/vote/{poll_id}", json={"option_id": "A"})
        real_apply = service.store.apply

        async def landed_but_reply_lost(batches: list[Batch]) -> Applied:
            await real_apply(batches)
            raise NodeUnavailable(batches[0].node, first.url, "reply lost")

        service.store.apply = landed_but_reply_lost  # type: ignore[method-assign]
        assert await service.flusher.flush() == 0  # stored, but kept sealed in the journal
    assert sum(sum(stored_counts(first, p).values()) for p in polls) == 40
    grown = settings_for([first, second], journal_dir=str(tmp_path / "j"))
    async with running_app(grown) as (client, service):
        assert service.migration is not None
        await service.migration.wait()
        for poll_id in polls:
            body = (await client.get(f"/api/v1/results/{poll_id}")).json()
            assert body["results"] == {"A": 1}, poll_id
    total = sum(sum(stored_counts(n, p).values()) for n in (first, second) for p in polls)
    assert total == 40


async def test_a_journal_that_cannot_seal_loses_no_votes(
    start_node: NodeFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = start_node()
    settings = settings_for([node], journal_dir=str(tmp_path / "j"))
    async with running_app(settings) as (client, service):
        await client.post("/api/v1/vote/p", json={"option_id": "A"})

        def disk_full(unit: object) -> None:
            raise OSError(28, "No space left on device")

        assert service.journal is not None
        real_seal = service.journal.seal
        monkeypatch.setattr(service.journal, "seal", disk_full)
        assert await service.flusher.flush() == 0  # not sealed: not sent
        assert stored_counts(node, "p") == {}
        assert service.flusher.in_flight_votes() == 1
        assert (await client.get("/api/v1/results/p")).json()["results"] == {"A": 1}
        monkeypatch.setattr(service.journal, "seal", real_seal)
        assert await service.flusher.flush() == 1
    assert stored_counts(node, "p") == {"A": 1}


async def test_a_restart_with_fewer_workers_recovers_every_slot(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    node = start_node()
    for index, poll in [(0, "p"), (1, "q"), (2, "r")]:  # three workers' leftovers
        slot = tmp_path / "j" / f"slot-{index}"
        slot.mkdir(parents=True)
        (slot / f"votes-w{index}-n-1.log").write_bytes(_record(poll, "A", 2))
    settings = load_settings(
        redis_nodes=f"n={node.url}", journal_dir=str(tmp_path / "j"), batch_interval_seconds=3600
    )
    async with running_app(settings):
        pass  # one worker starts, recovers, and flushes on the way out
    assert [stored_counts(node, poll) for poll in "pqr"] == [{"A": 2}] * 3


# -- damage and crashes during recovery (hardening issue, items 4 and 5) ------------------


def _record(poll: str, option: str, n: int) -> bytes:
    from app.services.journal_format import encode_record

    return encode_record([(poll, option, n)])


def _damaged_count(poll: str, option: str, count: str) -> bytes:
    """A record with a valid checksum whose count is out of range."""
    import zlib

    payload = f"{poll}\t{option}\t{count}".encode()
    return b"%08x\t%s\n" % (zlib.crc32(payload), payload)


async def test_a_damaged_journal_is_quarantined_and_the_rest_replays(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    node = start_node()
    slot = tmp_path / "j" / "slot-0"
    slot.mkdir(parents=True)
    lines = [
        _record("good", "A", 2),
        b"garbage line\n",
        b"\x00\x00\x00\x00\n",
        b"\xff\xfe not utf-8\n",
        b"good\tA\t1\n",  # no checksum (a bit flip can make a record look like this)
        _damaged_count("good", "A", "-40"),  # a negative count would remove votes
        _damaged_count("good", "A", "99999999999999999999"),  # would poison the batch
        _record("good", "B", 1),
        b"3b1f0a2c\tgood\tA\t5\n",  # a checksum that does not match
        _record("good", "A", 1)[:-4],  # torn: the last write never finished
    ]
    (slot / "votes-old-n-1.log").write_bytes(b"".join(lines))
    (slot / "sealed-old-1.json").write_bytes(b"")  # empty
    (slot / "sealed-old-2.json").write_bytes(b'{"segments": [], "batches": [{"flus')  # cut short
    settings = settings_for(None, redis_nodes=f"n={node.url}", journal_dir=str(tmp_path / "j"))
    async with running_app(settings) as (client, _):  # start-up does not fail
        journal = (await client.get("/api/v1/health")).json()["journal"]
    assert journal["quarantined_lines"] == 8
    assert sorted(journal["quarantined_files"]) == [
        "sealed-old-1.json",
        "sealed-old-2.json",
        "votes-old-n-1.log.rejected",
    ]
    assert stored_counts(node, "good") == {"A": 2, "B": 1}
    quarantine = tmp_path / "j" / "quarantine"
    assert (quarantine / "votes-old-n-1.log.rejected").read_bytes().count(b"\n") == 8
    assert not list(slot.glob("*.json")) + list(slot.glob("*.log"))


async def test_a_crash_in_the_middle_of_recovery_neither_loses_nor_doubles(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    from app.services.polling_service import PollingService
    from tests.faults import Crash, FaultPlan, abandon, journaled_service

    node = start_node()
    slot = tmp_path / "j" / "slot-0"
    slot.mkdir(parents=True)
    votes = 200_000
    (slot / "votes-old-n-1.log").write_bytes(_record("big", "A", 1) * votes)

    def service(plan: FaultPlan) -> PollingService:
        return journaled_service(node.url, tmp_path / "j", plan)

    for crash_at in ("rename", "delete"):  # after the sealed file lands; after a segment goes
        plan = FaultPlan()
        plan.steps = []
        target = crash_at

        def before(name: str, plan: FaultPlan = plan, target: str = target) -> bool:
            if plan.crashed:
                raise Crash(name)
            plan.steps.append(name)
            if name == target:
                plan.crashed = True
            return False

        plan.before = before  # type: ignore[method-assign]
        crashed = service(plan)
        with pytest.raises(Crash):
            await crashed.start()
        await abandon(crashed)
    recovered = service(FaultPlan())
    await recovered.start()
    assert await recovered.stop()
    assert stored_counts(node, "big") == {"A": votes}


async def test_a_recovery_split_across_two_workers_slots_counts_once(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    """A sealed file only absorbs segments of its own folder: a worker's leftover segment is
    moved into the recovering worker's slot before it is sealed, so a crash right after the
    seal cannot leave the sealed file in one slot and the segment in another (where a
    second worker would replay it again)."""
    import fcntl

    from tests.faults import Crash, FaultPlan, abandon, journaled_service

    node = start_node()
    root = tmp_path / "j"
    (root / "slot-1").mkdir(parents=True)
    (root / "slot-1" / "votes-old-n-1.log").write_bytes(_record("p", "A", 1) * 5)
    plan = FaultPlan()
    real_before = plan.before

    def before(name: str) -> bool:
        fail = real_before(name)
        if name == "fsync folder":  # the sealed file is in place: die right here
            plan.crashed = True
        return fail

    plan.before = before  # type: ignore[method-assign]
    crashed = journaled_service(node.url, root, plan)
    with pytest.raises(Crash):
        await crashed.start()
    await abandon(crashed)
    settings = settings_for(None, redis_nodes=f"n={node.url}", journal_dir=str(root))
    held = os.open(root / "slot-1" / "lock", os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)  # worker B is starting: A cannot adopt slot-1
    async with running_app(settings) as (_, first):
        os.close(held)
        async with running_app(settings) as (_, second):  # worker B takes slot-1
            assert first.journal and second.journal
            assert second.journal.directory.name == "slot-1"
    assert stored_counts(node, "p") == {"A": 5}


async def test_a_vote_waiting_for_fsync_fails_when_its_segment_cannot_be_synced(
    tmp_path: Path,
) -> None:
    import errno

    from app.services.file_ops import FileOps
    from app.services.journal import Journal

    class SyncFails(FileOps):
        def fsync(self, fd: int) -> None:
            raise OSError(errno.EIO, "injected fsync failure")

    journal = Journal(tmp_path / "j", "always", SyncFails())
    journal.recover()
    journal.append_vote("n", "p", "A")
    waiting = asyncio.create_task(journal.commit())  # no commit loop runs: only detach acts
    await asyncio.sleep(0)
    assert journal.detach("n")  # the flusher swaps the buffer; the segment's fsync fails
    with pytest.raises(OSError, match="injected fsync failure"):
        await waiting


async def test_an_unreadable_sealed_file_keeps_the_marks_on_the_nodes(tmp_path: Path) -> None:
    from app.services.file_ops import FileOps
    from app.services.journal import Journal

    class ReadFails(FileOps):
        def read(self, path: Path) -> bytes:
            raise OSError("injected read failure")

    slot = tmp_path / "j" / "slot-0"
    slot.mkdir(parents=True)
    (slot / "sealed-f-1.json").write_bytes(b"{}")
    journal = Journal(tmp_path / "j", "off", ReadFails())
    assert journal.recover().batches == []
    assert journal.holds_files()  # so a clean stop does not delete any mark
    await journal.stop()
