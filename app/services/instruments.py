"""What the services count for the metrics, with no knowledge of who reads it.

The services keep plain integers and these two histograms; `app/api/metrics.py` reads them
when `/metrics` is scraped. Nothing here imports a service, so no import runs back up.
"""

from __future__ import annotations

from prometheus_client import Histogram

PATHS = ("adhoc", "bulk", "defined", "keyed")
Rejections = dict[tuple[str, str], int]  # (path, reason) -> requests refused


def flush_histogram() -> Histogram:
    """One flush of every node with work, in parallel (not registered: the collector
    yields it)."""
    return Histogram(
        "polling_flush_duration_seconds",
        "Time one flush took, all nodes in parallel",
        registry=None,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    )


def fsync_histogram() -> Histogram:
    """One group fsync of the journal's open segments."""
    return Histogram(
        "polling_journal_fsync_duration_seconds",
        "Time one group fsync of the vote journal took",
        registry=None,
        buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
    )
