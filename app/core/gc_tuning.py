"""The garbage collector of a process that holds many connections.

Every connection keeps tracked objects alive for as long as it is open, and a full
collection walks all of them: at 10,000 streams a single one used to take 0.4-2.6 s, the
whole of the p99 delay. So after start-up everything that exists is frozen (`gc.freeze()`:
never walked again) and the thresholds are raised so that full collections are rare; the
young generations still collect the short-lived garbage of each request.

`GcPauses` records every collection's pause (`gc.callbacks`); /metrics shows them.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# Gen 0 allocations, gen 0 runs per gen 1, gen 1 runs per gen 2. The young generations stay
# small (a gen 1 run walks at most about 100,000 objects: tens of ms), and a full run needs
# 1,000 young runs (CPython also waits until a quarter of the old objects are new).
THRESHOLDS = (10_000, 10, 100)


class GcPauses(Collector):
    """Collections and their pauses per generation, since start."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self._began = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        pause = time.perf_counter() - self._began
        generation = int(info["generation"])
        self.count[generation] += 1
        self.seconds[generation] += pause
        self.longest[generation] = max(self.longest[generation], pause)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        runs = CounterMetricFamily(
            "polling_gc_collections", "Garbage collections", labels=["generation"]
        )
        paused = CounterMetricFamily(
            "polling_gc_pause_seconds", "Time paused in garbage collection", labels=["generation"]
        )
        longest = GaugeMetricFamily(
            "polling_gc_pause_max_seconds", "Longest garbage collection", labels=["generation"]
        )
        for g in range(3):
            runs.add_metric([str(g)], self.count[g])
            paused.add_metric([str(g)], self.seconds[g])
            longest.add_metric([str(g)], self.longest[g])
        yield from (runs, paused, longest)


def tune_after_start_up(pauses: GcPauses, tune: bool = True) -> None:
    """Freeze what start-up made, raise the thresholds (`tune`), and record pauses."""
    if tune:
        gc.collect()
        gc.freeze()
        gc.set_threshold(*THRESHOLDS)
    if pauses not in gc.callbacks:
        gc.callbacks.append(pauses)


def stop_recording(pauses: GcPauses) -> None:
    """At shutdown: stop recording, and let the collector see everything again."""
    if pauses in gc.callbacks:
        gc.callbacks.remove(pauses)
    gc.unfreeze()
