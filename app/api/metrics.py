"""Every Prometheus metric the service exports, in one place.

Counting stays where it is cheapest: the services keep plain integers (accepted votes by
path, flusher and batcher counters, cache hits), and `ServiceCollector` reads them when
`/metrics` is scraped, so a vote costs nothing more. Only the two latency histograms
(`app/services/instruments.py`) are prometheus_client objects, observed once per flush and
once per group fsync. This module sits above the services it reads: they never import it.

Every figure is this process's own: with several workers each answers for itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, make_asgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.routing import Route

from app.services.defined_polls import DefinedPolls
from app.services.instruments import PATHS
from app.services.polling_service import PollingService

if TYPE_CHECKING:
    from prometheus_client import Metric

Family = type[GaugeMetricFamily | CounterMetricFamily]


def _by_node(family: Family, name: str, doc: str, values: dict[str, int]) -> Metric:
    metric = family(name, doc, labels=["node"])
    for node, value in values.items():
        metric.add_metric([node], value)
    return metric


def _counter(name: str, doc: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class ServiceCollector(Collector):
    """Reads the app's services at scrape time; yields nothing before the lifespan has
    built them."""

    def __init__(self, state: Any) -> None:
        self.state = state  # the FastAPI app's `state`: `service` and `defined` once started
        # Open stream subscribers; the streams' publisher registry sets this when wired in.
        self.stream_subscribers: Callable[[], int] = lambda: 0
        self.stream_reads: Callable[[], int] = lambda: 0  # publishers' reads of results

    def describe(self) -> list[Metric]:
        return []  # names are not known before the service exists; skip the clash check

    def collect(self) -> Iterator[Metric]:
        service: PollingService | None = getattr(self.state, "service", None)
        defined: DefinedPolls | None = getattr(self.state, "defined", None)
        if service is None or defined is None:
            return
        yield from self._votes(service, defined)
        yield from self._nodes(service)
        flusher = service.flusher
        yield from flusher.flush_seconds.collect()
        yield _counter("polling_flushes", "Flushes run", flusher.flushes)
        yield _counter(
            "polling_flush_round_trips", "Flush pipelines sent, one per node", flusher.round_trips
        )
        yield _counter("polling_cache_hits", "Results read from the cache", service.cache.hits)
        yield _counter(
            "polling_cache_misses", "Results read from a node (cache on)", service.cache.misses
        )
        if service.journal is not None:
            yield from service.journal.fsync_seconds.collect()
        if service.migration is not None:
            yield from self._rebalance(service)
        batcher = defined.batcher
        yield _counter(
            "polling_defined_round_trips",
            "Round trips carrying defined-poll votes to their node",
            batcher.round_trips,
        )
        yield _counter(
            "polling_defined_votes_sent",
            "Defined-poll votes sent to their node (checked and counted there)",
            batcher.items_sent,
        )
        yield GaugeMetricFamily(
            "polling_stream_subscribers",
            "Clients subscribed to live result streams",
            value=self.stream_subscribers(),
        )
        yield CounterMetricFamily(
            "polling_stream_reads",
            "Reads of results by the live stream publishers (one per poll per interval)",
            value=self.stream_reads(),
        )

    @staticmethod
    def _rebalance(service: PollingService) -> Iterator[Metric]:
        migration = service.migration
        assert migration is not None
        report = migration.report
        yield GaugeMetricFamily(
            "polling_rebalance_active",
            "1 while polls move to their new owners after a ring change",
            value=int(migration.active),
        )
        yield _counter("polling_rebalance_polls_moved", "Polls moved by the scan", report.moved)
        yield _counter(
            "polling_rebalance_keys_scanned", "Keys the move's scan looked at", report.scanned
        )
        yield _counter(
            "polling_rebalance_first_touch",
            "Polls (and Idempotency-Keys) made whole on their owner when first touched",
            migration.on_demand,
        )

    @staticmethod
    def _votes(service: PollingService, defined: DefinedPolls) -> Iterator[Metric]:
        accepted = CounterMetricFamily(
            "polling_votes_accepted",
            "Votes acknowledged, by path (adhoc, bulk, defined, keyed)",
            labels=["path"],
        )
        by_path = {**service.accepted_by_path(), "defined": defined.accepted_votes}
        for path in PATHS:
            accepted.add_metric([path], by_path.get(path, 0))
        yield accepted
        rejected = CounterMetricFamily(
            "polling_votes_rejected",
            "Vote requests refused, by path and reason (the error `type`; `invalid` for 422)",
            labels=["path", "reason"],
        )
        for (path, reason), n in sorted({**service.rejected, **defined.rejected}.items()):
            rejected.add_metric([path, reason], n)
        yield rejected

    @staticmethod
    def _nodes(service: PollingService) -> Iterator[Metric]:
        flusher = service.flusher
        nodes = service.store.nodes
        yield _by_node(
            GaugeMetricFamily,
            "polling_pending_votes",
            "Votes in the node's buffer, waiting for the next flush",
            {n: service.buffers[n].votes for n in nodes},
        )
        yield _by_node(
            GaugeMetricFamily,
            "polling_in_flight_votes",
            "Votes sent (or being retried) to the node and not yet confirmed",
            {n: flusher.in_flight_votes(n) for n in nodes},
        )
        yield _by_node(
            GaugeMetricFamily,
            "polling_node_up",
            "1 unless the node was unreachable at start or its last flush failed "
            "(or its batches cannot be sealed); from the flusher's state, not a ping",
            {n: int(flusher.node_up(n)) for n in nodes},
        )
        yield _by_node(
            CounterMetricFamily,
            "polling_batch_retries",
            "Flushes of the node that retried batches whose previous attempt failed",
            {n: flusher.retries.get(n, 0) for n in nodes},
        )


def metrics_registry(state: Any) -> tuple[CollectorRegistry, ServiceCollector]:
    """A registry of the app's own (never the global one, so apps do not clash)."""
    registry = CollectorRegistry()
    collector = ServiceCollector(state)
    registry.register(collector)
    return registry, collector


class _Endpoint:
    """An ASGI app that Starlette's `Route` passes requests to as they are (it would wrap
    a plain function as a request handler)."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def metrics_route(registry: CollectorRegistry) -> Route:
    """`GET /metrics`: prometheus_client's ASGI app on the app's registry, at exactly that
    path (a `Mount` would answer only `/metrics/...`)."""
    endpoint = _Endpoint(make_asgi_app(registry=registry))
    return Route("/metrics", endpoint, methods=["GET"], include_in_schema=False)
