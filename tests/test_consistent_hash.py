import json
import os
import random
import subprocess
import sys

import pytest

from app.core.consistent_hash import HashRing, ring_hash

LABELS = ["redis_7000", "redis_7001"]


def random_ids(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [str(rng.randrange(10**9)) for _ in range(n)]


def test_same_key_maps_to_same_node_in_other_processes() -> None:
    keys = random_ids(500)
    here = {k: HashRing(LABELS).get_node(k) for k in keys}
    script = (
        "import json,sys; from app.core.consistent_hash import HashRing;"
        "r=HashRing(['redis_7000','redis_7001']); keys=json.load(sys.stdin);"
        "print(json.dumps({k: r.get_node(k) for k in keys}))"
    )
    for seed in ("1", "2"):  # Python's own hash() would differ between these
        out = subprocess.run(
            [sys.executable, "-c", script],
            input=json.dumps(keys),
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert json.loads(out.stdout) == here


def test_two_nodes_split_random_polls_no_worse_than_40_60() -> None:
    ring = HashRing(LABELS, virtual_nodes=100)
    counts = {label: 0 for label in LABELS}
    for key in random_ids(10_000):
        counts[ring.get_node(key)] += 1
    assert all(4_000 <= n <= 6_000 for n in counts.values()), counts


def test_key_share_matches_where_keys_land() -> None:
    ring = HashRing(LABELS)
    share = ring.key_share()
    assert sum(share.values()) == pytest.approx(1.0)
    keys = random_ids(20_000, seed=3)
    landed = sum(1 for k in keys if ring.get_node(k) == "redis_7000") / len(keys)
    assert landed == pytest.approx(share["redis_7000"], abs=0.02)


def test_adding_a_node_moves_only_keys_that_now_belong_to_it() -> None:
    ring = HashRing(LABELS)
    keys = random_ids(10_000)
    before = {k: ring.get_node(k) for k in keys}
    ring.add_node("redis_7002")
    after = {k: ring.get_node(k) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == "redis_7002" for k in moved)
    assert 0.25 <= len(moved) / len(keys) <= 0.42


def test_removing_a_node_puts_its_keys_back() -> None:
    ring = HashRing(LABELS)
    keys = random_ids(5_000)
    before = {k: ring.get_node(k) for k in keys}
    ring.add_node("redis_7002")
    ring.remove_node("redis_7002")
    assert {k: ring.get_node(k) for k in keys} == before
    assert ring.nodes == LABELS


def test_key_above_the_last_point_wraps_to_the_first() -> None:
    ring = HashRing(LABELS, virtual_nodes=10)
    top = ring._positions[-1]
    key = next(k for k in (f"k{i}" for i in range(100_000)) if ring_hash(k) > top)
    assert ring.get_node(key) == ring._owners[0]


def test_key_exactly_on_a_point_belongs_to_that_point() -> None:
    ring = HashRing(["a"], virtual_nodes=3)
    ring.add_node("b")
    for point, owner in zip(ring._positions, ring._owners, strict=True):
        # ring_hash of a virtual node's own name is its point
        assert point in {ring_hash(f"{owner}#{i}") for i in range(3)}
    assert ring.get_node("a#0") == "a" and ring.get_node("b#2") == "b"


def test_memo_is_cleared_when_the_ring_changes() -> None:
    ring = HashRing(["a"])
    keys = random_ids(2_000)
    assert {ring.get_node(k) for k in keys} == {"a"}
    ring.add_node("b")
    assert {ring.get_node(k) for k in keys} == {"a", "b"}


def test_errors() -> None:
    with pytest.raises(LookupError):
        HashRing().get_node("x")
    ring = HashRing(["a"])
    with pytest.raises(ValueError):
        ring.add_node("a")
    with pytest.raises(KeyError):
        ring.remove_node("b")
    with pytest.raises(ValueError):
        HashRing(["a"], virtual_nodes=0)
