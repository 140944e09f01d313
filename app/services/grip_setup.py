"""Builds the Pushpin publishers from the settings, with leases on the store's nodes."""

from __future__ import annotations

from app.core.config import Settings
from app.services.grip import PushpinClient
from app.services.poll_leases import MemoryPollLeases, PollLeases, RedisPollLeases
from app.services.publisher import GripPublishers
from app.services.read_states import ReadStates
from app.storage.base import Store
from app.storage.cluster_store import ClusterRedisStore
from app.storage.redis_store import ShardedRedisStore


def build_leases(store: Store) -> PollLeases:
    if isinstance(store, ShardedRedisStore):
        return RedisPollLeases(store.manager, store.call)
    if isinstance(store, ClusterRedisStore):
        return RedisPollLeases(store, store.call)
    return MemoryPollLeases()


def build_publishers(settings: Settings, store: Store, states: ReadStates) -> GripPublishers | None:
    """None unless both a grip key and publish URLs are set: then streams are served directly."""
    if settings.pushpin_grip_key is None or not settings.publish_urls:
        return None
    return GripPublishers(
        build_leases(store),
        PushpinClient(settings.publish_urls),
        states,
        settings.stream_interval_seconds,
        settings.pushpin_watch_seconds,
    )
