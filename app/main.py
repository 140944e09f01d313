"""The app factory and its lifespan: open the store, start the flusher; on shutdown stop
taking votes, flush everything, close connections. Nothing connects at import time."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from app.api.deadlines import BodyDeadlines, BodyTimeout
from app.api.fast_path import FastPath
from app.api.handlers import timeout_reply
from app.api.metrics import metrics_registry, metrics_route
from app.api.refusals import OneLineRefusals, settings_or_exit
from app.api.responses import to_response
from app.api.v1.router import api_router
from app.api.voters import VoterCookies
from app.core.config import Settings
from app.core.gc_tuning import GcPauses, stop_recording, tune_after_start_up
from app.core.limits import raise_open_files, stream_cap
from app.services.defined_polls import DefinedPolls
from app.services.events import Events
from app.services.grip_setup import build_publishers
from app.services.history_recorder import HistoryRecorder
from app.services.journal import Journal
from app.services.live_results import HEARTBEAT_SECONDS, LiveResults
from app.services.polling_service import PollingService
from app.services.read_states import ReadStates
from app.services.results_cache import ResultsCache
from app.services.stream_caps import StreamCaps
from app.storage.base import Store
from app.storage.cluster_store import ClusterRedisStore
from app.storage.defined import RedisDefinedStore
from app.storage.defined_memory import MemoryDefinedStore
from app.storage.durability import DurabilityPolicy
from app.storage.events import RedisEventStore
from app.storage.events_memory import MemoryEventStore
from app.storage.memory import MemoryStore
from app.storage.mover import Mover
from app.storage.redis_store import ShardedRedisStore
from app.web import event_pages, join
from app.web import routes as web
from app.web.pages import STATIC_DIR

logger = logging.getLogger("app.main")

DESCRIPTION = """Live polling backend: votes are buffered in memory and flushed to Redis in
batches, polls are sharded over Redis nodes by a consistent-hash ring, and results are cached
for a few seconds. Reads always include votes that are not flushed yet."""


def build_store(settings: Settings) -> Store:
    if settings.cluster is not None:
        return ClusterRedisStore(
            settings.cluster,
            settings.redis_timeout_seconds,
            settings.redis_tls_ca_file,
            seeds=settings.cluster_seeds,
            durability=DurabilityPolicy(settings.durable_wait_ms, settings.min_replicas_acked),
            allow_forgetful=settings.allow_nodes_without_persistence,
        )
    if not settings.nodes:
        return MemoryStore()
    return ShardedRedisStore(
        settings.nodes,
        settings.virtual_nodes,
        settings.redis_timeout_seconds,
        settings.redis_tls_ca_file,
        settings.retiring_nodes,
        DurabilityPolicy(settings.durable_wait_ms, settings.min_replicas_acked),
        allow_forgetful=settings.allow_nodes_without_persistence,
    )


def build_service(settings: Settings) -> PollingService:
    store = build_store(settings)
    mover = None
    if isinstance(store, ShardedRedisStore):
        mover = Mover(store.manager, store.call, settings.rebalance_batch)
    return PollingService(
        store,
        batch_interval=settings.batch_interval_seconds,
        batch_max_votes=settings.batch_max_votes,
        cache=ResultsCache(settings.cache_ttl_seconds, settings.cache_max_polls),
        max_options_per_poll=settings.max_options_per_poll,
        max_pending_pairs_per_node=settings.max_pending_pairs_per_node,
        shutdown_flush_seconds=settings.shutdown_flush_seconds,
        journal=build_journal(settings),
        mover=mover,
        ring_lease_seconds=settings.ring_lease_seconds,
    )


def build_defined(service: PollingService) -> DefinedPolls:
    store = service.store
    if isinstance(store, ShardedRedisStore):
        defined = RedisDefinedStore(store.manager, store.call, store.durable)
        return DefinedPolls(defined, whole=service.whole, fence=service.confirm_ring)
    if isinstance(store, ClusterRedisStore):
        return DefinedPolls(RedisDefinedStore(store, store.call))
    return DefinedPolls(MemoryDefinedStore())


def build_events(service: PollingService, polls: DefinedPolls) -> Events:
    store = service.store
    if isinstance(store, ShardedRedisStore):
        return Events(RedisEventStore(store.manager, store.call), polls)
    if isinstance(store, ClusterRedisStore):
        return Events(RedisEventStore(store, store.call), polls)
    return Events(MemoryEventStore(), polls)


def build_live(settings: Settings) -> LiveResults:
    """The streams' publishers, with caps that leave file handles for everything else."""
    open_files = raise_open_files()
    caps = StreamCaps(stream_cap(settings, open_files), settings.stream_max_per_client)
    logger.info("open-file limit %d; at most %d live streams", open_files, caps.total)
    return LiveResults(
        settings.stream_interval_seconds,
        heartbeat=HEARTBEAT_SECONDS,
        buffer_bound=settings.stream_buffer_bytes,
        stall_seconds=settings.stream_stall_seconds,
        max_empty_polls=settings.stream_max_empty_polls,
        caps=caps,
    )


def build_cookies(settings: Settings) -> VoterCookies:
    if settings.voter_secret is None:
        logger.warning("VOTER_SECRET is not set: voter cookies are valid for this process only")
        return VoterCookies(secrets.token_bytes(32))
    return VoterCookies(settings.voter_secret.get_secret_value().encode())


def build_journal(settings: Settings) -> Journal | None:
    """The write-ahead journal, when a folder is set. A write-through service appends
    nothing to it (its answers wait for the node) but still replays what a batching run
    left there."""
    if not settings.journal_dir:
        return None
    return Journal(
        Path(settings.journal_dir), settings.journal_fsync, max_bytes=settings.journal_max_bytes
    )


def _warn_unreachable(service: PollingService) -> None:
    """A start with nodes that do not answer serves anyway (votes for known options are
    held for them): say so as a WARNING naming them. No round trip of its own: a node that
    start-up could not check (`flusher.checked`) did not answer."""
    described = service.store.describe()
    down = [f"{label}={url}" for label, url in described if label not in service.flusher.checked]
    if down:
        some = f"{len(down)} of {len(described)} nodes not"
        logger.warning(
            "started with %s reachable: %s; votes for them are held (up to the backlog cap) "
            "until they answer",
            "no node" if len(down) == len(described) else some,
            ", ".join(down),
        )


def _configure_logging(debug: bool) -> None:
    app_logger = logging.getLogger("app")
    app_logger.setLevel(logging.DEBUG if debug else logging.INFO)
    if logging.getLogger().handlers:  # the host configured logging (a test runner): use it
        return
    if not app_logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        app_logger.addHandler(handler)
        app_logger.propagate = False


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own 422s, in the same `{loc, msg, type}` shape as ours."""
    assert isinstance(exc, RequestValidationError)
    detail = [
        {"loc": list(e.get("loc", [])), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    return JSONResponse({"detail": detail}, status_code=422)


async def _body_timeout(request: Request, exc: Exception) -> Response:
    """A body that did not arrive in time: 408, as the fast path answers it."""
    assert isinstance(exc, BodyTimeout)
    return to_response(timeout_reply(exc))


def create_app(settings: Settings | None = None) -> FastAPI | FastPath:
    """The ASGI app uvicorn runs: the API, behind the fast path unless that is turned off."""
    settings = settings or settings_or_exit()  # uvicorn's factory: a bad setting is one line
    api = create_api(settings)
    return FastPath(api, settings.api_prefix) if settings.fast_vote_path else api


def create_api(settings: Settings) -> FastAPI:
    """The FastAPI app: every route, documented, and the lifespan that owns the service."""
    _configure_logging(settings.debug)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = build_service(settings)
        app.state.service = service
        app.state.defined = build_defined(service)
        app.state.events = build_events(service, app.state.defined)
        app.state.history = history = HistoryRecorder(app.state.defined)
        app.state.voter_cookies = build_cookies(settings)
        app.state.live = live = build_live(settings)
        app.state.read_states = states = ReadStates(settings.results_max_age_seconds)
        app.state.defined.changed = lambda poll_id: states.forget(f"def:{poll_id}")
        app.state.grip = build_publishers(settings, service.store, states)
        app.state.metrics.stream_subscribers = lambda: live.subscribers
        app.state.metrics.stream_reads = lambda: live.reads.total
        await service.start()
        _warn_unreachable(service)
        history.start()
        tune_after_start_up(gc_pauses, settings.gc_tuning)
        nodes = ", ".join(f"{label}={url}" for label, url in service.store.describe())
        logger.info(
            "started: nodes %s; batch every %ss; cache %ss",
            nodes,
            settings.batch_interval_seconds,
            settings.cache_ttl_seconds,
        )
        try:
            yield
        finally:
            stop_recording(gc_pauses)
            await app.state.live.close()
            if app.state.grip is not None:
                await app.state.grip.close()
            await history.stop()
            if await service.stop():
                logger.info("stopped: all held votes flushed")
            else:
                logger.error("stopped with votes not flushed (see above)")

    # FastAPIOffline: the same FastAPI app, with /docs and /redoc served from the package
    # rather than a CDN, so the docs work on a laptop at a venue without internet.
    app = FastAPIOffline(
        title="Distributed Live Polling",
        description=DESCRIPTION,
        version="1.0.0",
        debug=settings.debug,
        lifespan=lifespan,
        redirect_slashes=False,  # `/vote/` is no route: 404, not a redirect to one
        exception_handlers={RequestValidationError: _validation_error, BodyTimeout: _body_timeout},
    )
    app.add_middleware(OneLineRefusals)  # a start-up refusal is one line, not a traceback
    app.state.settings = settings
    app.state.body_deadlines = BodyDeadlines(settings.body_timeout_seconds)
    registry, app.state.metrics = metrics_registry(app.state)
    gc_pauses = GcPauses()
    registry.register(gc_pauses)
    app.router.routes.append(metrics_route(registry))

    @app.get("/", tags=["health"], summary="Liveness", response_model=dict[str, str])
    async def root(request: Request) -> dict[str, str] | Response:
        """`{"status": "healthy"}`; a browser (`Accept: text/html`) gets the box to type a
        join code in instead."""
        if join.wants_html(request):
            return join.join_page(request)
        return {"status": "healthy"}

    app.include_router(api_router, prefix=settings.api_prefix)
    app.include_router(web.router)  # the pages of the live room
    app.include_router(join.router)
    app.include_router(event_pages.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
