"""Fixtures that start real Redis-compatible servers on free loopback ports, and the app
in-process against them. Every server a test starts is stopped, even when the test fails."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from app.api.fast_path import FastPath
from app.core.config import Settings, load_settings
from app.devtools.local_nodes import LocalNode, free_port
from app.devtools.uvicorn_process import UvicornProcess
from app.main import create_app
from app.services.defined_polls import DefinedPolls
from app.services.polling_service import PollingService
from app.services.results_cache import ResultsCache
from app.storage.base import Store
from app.storage.defined import RedisDefinedStore
from app.storage.mover import Mover
from app.storage.redis_store import ShardedRedisStore

NodeFactory = Callable[..., LocalNode]


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[NodeFactory]:
    """Start a node on a free port: `start_node()`, `start_node(persist=True)` (its data
    survives a restart), `start_node(forgetful=True)` (no AOF at all)."""
    nodes: list[LocalNode] = []

    def start(
        persist: bool = False,
        port: int | None = None,
        password: str | None = None,
        forgetful: bool = False,
    ) -> LocalNode:
        port = port or free_port()
        data = tmp_path / f"node-{port}" if persist else None
        # Every write fsynced: the service's WAITAOF then answers at once (with everysec
        # it waits for the next second's fsync); a kill -9 loses nothing either way.
        node = LocalNode(port, data, password, forgetful=forgetful, appendfsync="always")
        nodes.append(node)
        return node.start()

    yield start
    for node in nodes:
        node.kill()


@pytest.fixture
def two_nodes(start_node: NodeFactory) -> list[LocalNode]:
    return [start_node(), start_node()]


def nodes_setting(nodes: list[LocalNode]) -> str:
    return ",".join(node.url for node in nodes)


def settings_for(nodes: list[LocalNode] | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_nodes": nodes_setting(nodes) if nodes else "",
        "batch_interval_seconds": 3600,  # tests flush explicitly unless they ask otherwise
        "ring_lease_seconds": 1.0,  # a killed service's lease ends soon
        # In-process apps share the test runner's heap: a full collection and a freeze at
        # each of hundreds of starts would cost seconds each (served processes tune it).
        "gc_tuning": False,
    }
    values.update(overrides)
    return load_settings(**values)


@asynccontextmanager
async def running_app(
    settings: Settings,
) -> AsyncIterator[tuple[httpx.AsyncClient, PollingService]]:
    """The app with its lifespan running, and an HTTP client that talks to it in-process."""
    app = create_app(settings)
    api = app.api if isinstance(app, FastPath) else app
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, api.state.service


def stored_counts(node: LocalNode, poll_id: str) -> dict[str, int]:
    client = redis.Redis(host="127.0.0.1", port=node.port, password=node.password)
    try:
        raw = client.hgetall(f"poll:{{{poll_id}}}")
        return {k.decode(): int(v) for k, v in raw.items()}
    finally:
        client.close()


ServiceProcess = UvicornProcess


@pytest.fixture
def start_service() -> Iterator[Callable[..., ServiceProcess]]:
    started: list[ServiceProcess] = []

    def start(env: dict[str, str], workers: int = 1) -> ServiceProcess:
        service = UvicornProcess(env=env, workers=workers)
        started.append(service)
        return service.wait_ready()

    yield start
    for service in started:
        service.kill()


def moving_service(store: ShardedRedisStore, mover: Mover) -> tuple[PollingService, DefinedPolls]:
    """A service (no flush unless asked) whose ring-change move retries at once, and its
    defined polls, as the move tests drive them."""
    service = service_for(store, mover=mover, cache_ttl=5)
    assert service.migration is not None
    service.migration.retry_seconds = 0
    defined = DefinedPolls(RedisDefinedStore(store.manager, store.call), whole=service.whole)
    return service, defined


def service_for(store: Store, *, cache_ttl: float = 0, **extra: Any) -> PollingService:
    """A service on `store` that flushes only when a test asks it to."""
    return PollingService(
        store,
        batch_interval=3600,
        batch_max_votes=10**9,
        cache=ResultsCache(cache_ttl, 1000),
        max_options_per_poll=10,
        max_pending_pairs_per_node=100_000,
        shutdown_flush_seconds=0,
        **({"ring_lease_seconds": 1.0} | extra),  # a killed service's lease ends soon
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Each phase's report kept on the test (`item.stash[REPORTS]`), so a fixture can add
    what it knows (a server's log) when the test failed."""
    report = yield
    item.stash.setdefault(REPORTS, {})[report.when] = report
    return report


REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


def failed(request: pytest.FixtureRequest) -> bool:
    reports = request.node.stash.get(REPORTS, {})
    return any(r.failed for r in reports.values())
