"""The report `GET /health` gives: each node's state and what this instance holds for it,
the buffer, the cache, counters, the move after a ring change, and the journal."""

from __future__ import annotations

from app.services.flusher import Flusher
from app.services.polling_service import PollingService

# What one held (poll, option) pair costs at most, in the buffer and then in its batch, with
# 64-character ids and one option per poll (measured: tests/test_memory_caps.py).
BYTES_PER_PAIR = 550


def node_memory(store: object, flusher: Flusher, node: str) -> dict[str, object]:
    """A node's part of `/health` about forgetting: `lost_data` (null, or what it lost)
    and `forgets` (why it would lose everything on a restart, when that was accepted)."""
    loss = flusher.losses.losses.get(node)
    forgetful: dict[str, str] = getattr(store, "forgetful", {})
    return {
        "lost_data": loss.describe() if loss is not None else None,
        "forgets": forgetful.get(node),
    }


def node_health(
    service: PollingService, label: str, url: str, reachable: bool
) -> dict[str, object]:
    flusher = service.flusher
    held = service.buffers[label].pairs + flusher.held_pairs.get(label, 0)
    return {
        "label": label,
        "url": url,
        "reachable": reachable,
        "pending_votes": service.buffers[label].votes,
        "in_flight_votes": flusher.in_flight_votes(label),
        "held_pairs": held,
        "held_bytes_estimate": held * BYTES_PER_PAIR,
        "backlog_cap_pairs": service.max_pending_pairs,
        "error": flusher.down.get(label) or flusher.unsealed.get(label),
        "set_aside_polls": sorted(flusher.set_aside.get(label, ())),
        **node_memory(service.store, flusher, label),
    }


async def health_report(
    service: PollingService, extra_counters: dict[str, int] | None = None
) -> dict[str, object]:
    """`extra_counters` join `counters` (the defined polls')."""
    flusher = service.flusher
    reachable = await service.store.ping()
    nodes = [
        node_health(service, label, url, reachable.get(label, False))
        for label, url in service.store.describe()
    ]
    healthy = all(n["reachable"] and not n["error"] and not n["lost_data"] for n in nodes)
    report: dict[str, object] = {
        "status": "ok"
        if healthy and not flusher.set_aside and not service.ring_lost
        else "degraded",
        "nodes": nodes,
        "buffer": {
            "pending_votes": service.pending_votes(),
            "pending_polls": sum(b.polls for b in service.buffers.values()),
            "in_flight_votes": flusher.in_flight_votes(),
        },
        "cache": {"polls": len(service.cache), "ttl_seconds": service.cache.ttl},
        "counters": {
            "accepted_votes": service.accepted_votes,
            "flushes": flusher.flushes,
            "round_trips": flusher.round_trips,
            **(extra_counters or {}),
        },
    }
    if service.ring_lost is not None:
        report["ring_lost"] = service.ring_lost
    if service.migration is not None:
        report["rebalance"] = service.migration.describe()
    if service.journal is not None:
        quarantine = service.journal.quarantine
        report["journal"] = {
            "fsync": service.journal.fsync,
            "quarantine_folder": quarantine.folder,
            "quarantined_files": quarantine.files,
            "quarantined_lines": quarantine.lines,
        }
    return report
