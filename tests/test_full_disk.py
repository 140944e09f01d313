"""A journal that fills its disk cannot deadlock itself: on a real 2 MiB filesystem (tmpfs),
votes taken while the node is down fill the disk until new votes answer 503; once the node
is up every acknowledged vote lands, with the service running on, and also when it was
killed -9 on the full disk and started again there."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from app.devtools.local_nodes import LocalNode
from tests.conftest import ServiceProcess

TOKEN = "disk-token"
POLLS = 2_000  # one pair each: a bulk request of them is one ~40 KiB journal record


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        reason = f"cannot mount a tmpfs here: {mounted.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def bulk(service: ServiceProcess, count: int = 1) -> httpx.Response:
    entries = [{"poll_id": f"d{i}", "option_id": "A", "count": count} for i in range(POLLS)]
    return httpx.post(
        f"{service.url}/api/v1/votes",
        json=entries,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )


def total(node: LocalNode) -> int:
    with redis.Redis(port=node.port) as client:
        pipe = client.pipeline(transaction=False)
        for i in range(POLLS):
            pipe.hget(f"poll:{{d{i}}}", "A")
        return sum(int(n or 0) for n in pipe.execute())


@pytest.mark.parametrize("restart", [False, True], ids=["running", "restarted_on_full_disk"])
def test_a_full_journal_disk_refuses_new_votes_and_still_drains_the_held_ones(
    small_disk: Path,
    start_node: Callable[..., LocalNode],
    start_service: Callable[..., ServiceProcess],
    restart: bool,
) -> None:
    node = start_node(persist=True)
    env = {
        "REDIS_NODES": f"n={node.url}",
        "JOURNAL_DIR": str(small_disk),
        "BATCH_INTERVAL_SECONDS": "0.2",
        "API_TOKEN": TOKEN,
        "MAX_PENDING_PAIRS_PER_NODE": str(4 * POLLS),
    }
    service = start_service(env)
    assert bulk(service).status_code == 200  # the options are registered while the node is up
    acknowledged = POLLS
    node.kill()
    refused = None
    for _ in range(200):  # 2 MiB fill up long before this
        reply = bulk(service)
        if reply.status_code == 200:
            acknowledged += POLLS
            continue
        refused = reply
        break
    assert refused is not None and refused.status_code == 503, "the disk never filled"
    assert refused.json()["type"] == "journal_unavailable", refused.text
    assert acknowledged > 10 * POLLS  # the disk really held many votes
    if restart:
        service.kill()  # kill -9 on the full disk
    node.start()
    if restart:
        service = start_service(env)
    deadline = time.monotonic() + 30
    while total(node) < acknowledged:
        assert time.monotonic() < deadline, (
            f"held votes never drained: {total(node)} of {acknowledged} landed"
        )
        time.sleep(0.2)
    assert total(node) == acknowledged
    assert bulk(service).status_code == 200  # and the disk takes votes again
    deadline = time.monotonic() + 30
    while total(node) < acknowledged + POLLS:
        assert time.monotonic() < deadline, "votes after the drain did not land"
        time.sleep(0.2)
    assert total(node) == acknowledged + POLLS


def test_a_full_disk_with_one_node_down_still_drains_every_node(
    small_disk: Path,
    start_node: Callable[..., LocalNode],
    start_service: Callable[..., ServiceProcess],
) -> None:
    """Two nodes, one down while the disk fills with votes for both (the other one up and
    taking its batches): once the down node is back, every acknowledged vote lands on its
    owner, exactly once."""
    nodes = [start_node(persist=True), start_node(persist=True)]
    env = {
        "REDIS_NODES": ",".join(f"n{i}={n.url}" for i, n in enumerate(nodes)),
        "JOURNAL_DIR": str(small_disk),
        "BATCH_INTERVAL_SECONDS": "0.2",
        "API_TOKEN": TOKEN,
        "MAX_PENDING_PAIRS_PER_NODE": str(4 * POLLS),
    }
    service = start_service(env)
    assert bulk(service).status_code == 200
    acknowledged = 1
    nodes[0].kill()
    refused = None
    for _ in range(400):
        reply = bulk(service)
        if reply.status_code == 200:
            acknowledged += 1
            continue
        refused = reply
        break
    assert refused is not None and refused.status_code == 503, "the disk never filled"
    assert acknowledged > 10
    nodes[0].start()

    def landed() -> int:
        return sum(total(n) for n in nodes)

    deadline = time.monotonic() + 60
    while landed() < acknowledged * POLLS:
        assert time.monotonic() < deadline, (
            f"held votes never drained: {landed()} of {acknowledged * POLLS} landed"
        )
        time.sleep(0.2)
    assert landed() == acknowledged * POLLS
    assert bulk(service).status_code == 200  # and the disk takes votes again


def test_journal_max_bytes_bounds_the_votes_held_on_disk(
    tmp_path: Path,
    start_node: Callable[..., LocalNode],
    start_service: Callable[..., ServiceProcess],
) -> None:
    """JOURNAL_MAX_BYTES on a disk with room to spare: with the node down, votes are
    refused (503 `journal_unavailable`) once the seals they need reach the cap, the folder
    then holds about the cap (segments plus their reserve, and a sealed file), and once the
    node is up every acknowledged vote lands."""
    node = start_node(persist=True)
    cap = 1 << 20
    journal = tmp_path / "journal"
    env = {
        "REDIS_NODES": f"n={node.url}",
        "JOURNAL_DIR": str(journal),
        "JOURNAL_MAX_BYTES": str(cap),
        "BATCH_INTERVAL_SECONDS": "0.2",
        "API_TOKEN": TOKEN,
        "MAX_PENDING_PAIRS_PER_NODE": str(4 * POLLS),
    }
    service = start_service(env)
    assert bulk(service).status_code == 200
    acknowledged = POLLS
    node.kill()
    refused = None
    for _ in range(200):
        reply = bulk(service)
        if reply.status_code == 200:
            acknowledged += POLLS
            continue
        refused = reply
        break
    assert refused is not None and refused.status_code == 503, "the cap never refused"
    assert refused.json()["type"] == "journal_unavailable", refused.text
    held = sum(f.stat().st_size for f in journal.rglob("*") if f.is_file())
    assert held <= 3 * cap, f"{held} bytes on disk with JOURNAL_MAX_BYTES={cap}"
    node.start()
    deadline = time.monotonic() + 30
    while total(node) < acknowledged:
        assert time.monotonic() < deadline, f"{total(node)} of {acknowledged} landed"
        time.sleep(0.2)
    assert total(node) == acknowledged
