"""Settings, from the environment and `.env`. A bad value stops start-up naming the setting."""

from __future__ import annotations

from functools import cached_property
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core.nodes import NodeSpec, parse_cluster_urls, parse_nodes

DEFAULT_NODES = "redis://127.0.0.1:7000,redis://127.0.0.1:7001"


class SettingsError(Exception):
    """A setting has a value the service cannot start with."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_ignore_empty=False,
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,  # a node URL may hold a password
    )

    redis_nodes: str = Field(
        DEFAULT_NODES,
        repr=False,  # may hold passwords; `nodes` shows them redacted
        description="Comma-separated `url` or `label=url`; empty for the in-memory store.",
    )
    redis_retiring_nodes: str = Field(
        "",
        repr=False,
        description="Nodes leaving the ring (`url` or `label=url`, their old labels): reached "
        "only to move their polls to the nodes of `REDIS_NODES` at start.",
    )
    redis_cluster_url: str = Field(
        "",
        repr=False,
        description="Seed nodes of a Redis Cluster, comma-separated (`redis://host:port,...`): "
        "the cluster's slots shard the polls instead of our ring, and REDIS_NODES is not used. "
        "Any one seed may be down at start.",
    )
    min_replicas_acked: int = Field(
        0,
        ge=0,
        le=16,
        description="Replicas that must acknowledge a write before it counts as durable (as "
        "Kafka's min.insync.replicas): batches wait below it. Every connected replica is "
        "always waited for; 0 lets a server with none keep serving (a weaker promise).",
    )
    durable_wait_seconds: float = Field(
        1.0,
        ge=0,
        le=30,
        description="How long one WAIT / WAITAOF may block a round trip; an unconfirmed "
        "batch stays held and is confirmed by a later one. Kept below REDIS_TIMEOUT_SECONDS. "
        "0 never waits: a write counts once the server ran it (a weaker promise, said so in "
        "/health; the benchmark's reference).",
    )
    virtual_nodes: int = Field(100, ge=1, le=10_000)
    rebalance_batch: int = Field(
        100,
        ge=1,
        le=10_000,
        description="Polls moved per node round trip after a ring change (1: one at a time).",
    )
    ring_lease_seconds: float = Field(
        5.0,
        ge=0.2,
        le=300,
        description="Each instance holds a lease for its ring on every node, renewed every "
        "third of this: an instance with another ring is refused while one is alive (a "
        "start waits this long for a killed instance's lease to end).",
    )
    batch_interval_seconds: float = Field(
        10.0, ge=0, le=3600, description="0 writes every vote through to the store."
    )
    batch_max_votes: int = Field(
        100_000, ge=1, description="Flush early once this many votes are pending."
    )
    cache_ttl_seconds: float = Field(5.0, ge=0, le=3600, description="0 turns the cache off.")
    cache_max_polls: int = Field(100_000, ge=1)
    max_options_per_poll: int = Field(100, ge=1, le=10_000)
    max_pending_pairs_per_node: int = Field(
        120_000,
        ge=1,
        description="Backlog cap: (poll, option) pairs held per node (buffer and in flight) "
        "before votes get 503; at most 550 bytes each, so the default is 64 MiB per node.",
    )
    shutdown_flush_seconds: float = Field(
        10.0, ge=0, le=600, description="How long shutdown keeps retrying a node that is down."
    )
    redis_timeout_seconds: float = Field(2.0, gt=0, le=60)
    redis_tls_ca_file: str = Field(
        "", description="CA bundle to verify rediss:// nodes; empty uses the system's."
    )
    api_prefix: str = "/api/v1"
    api_token: SecretStr | None = Field(
        None, description="Bearer token for bulk ingestion; unset disables that endpoint."
    )
    voter_secret: SecretStr | None = Field(
        None,
        description="Signs the voter cookies of defined polls; set the same value on every "
        "instance. Unset: a random secret per process (cookies then last one process).",
    )
    body_timeout_seconds: float = Field(
        10.0, gt=0, le=3600, description="How long a request body may take to arrive; then 408."
    )
    max_header_bytes: int = Field(
        16 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Most bytes of URL and headers a request may have (uvicorn); then 431.",
    )
    stream_interval_seconds: float = Field(
        0.5, gt=0, le=60, description="Most one live results event per poll per this long."
    )
    results_max_age_seconds: int = Field(
        1,
        ge=0,
        le=3600,
        description="`Cache-Control: max-age` of public results, and how long an instance "
        "serves a defined poll's last read state before reading the node again (0: no-cache).",
    )
    pushpin_publish_urls: str = Field(
        "",
        description="Comma-separated publish URLs of every Pushpin instance "
        "(`http://pushpin:5561/publish/`); empty: no Pushpin.",
    )
    pushpin_grip_key: SecretStr | None = Field(
        None,
        description="Pushpin's `sig_key`: a stream request whose Grip-Sig it signed is held by "
        "Pushpin; unset, every stream is served directly.",
    )
    pushpin_watch_seconds: float = Field(
        60.0,
        ge=2,
        le=3600,
        description="A poll streamed through Pushpin counts as watched this long after the "
        "last stream request (Pushpin renews it every half of this per connection).",
    )
    stream_max_subscribers: int = Field(
        0,
        ge=0,
        description="Most live results streams this process holds, then 503; 0: the open-file "
        "limit less FILES_RESERVED less 128 connections kept for votes and reads.",
    )
    stream_max_per_client: int = Field(
        500,
        ge=0,
        description="Most live results streams from one client address, then 503; 0: no cap "
        "(behind a proxy every client has the proxy's address).",
    )
    stream_buffer_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="A subscriber with more unsent skips states until it drains.",
    )
    stream_stall_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="A subscriber over STREAM_BUFFER_BYTES this long is closed.",
    )
    stream_max_empty_polls: int = Field(
        100,
        ge=0,
        description="Watched ad-hoc polls without votes (each read every 5 s); past it a stream "
        "of another one answers 404.",
    )
    head_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=600,
        description="A connection without a complete request head this long "
        "(since it opened or since its last response) is closed.",
    )
    files_reserved: int = Field(
        128,
        ge=16,
        description="Open files kept for the journal, the nodes and logs: past the open-file "
        "limit less this, new connections get 503 and are closed.",
    )
    gc_tuning: bool = Field(
        True, description="Freeze start-up objects and raise the collector's thresholds."
    )
    fast_vote_path: bool = True
    workers: int = Field(1, ge=1, le=64)
    journal_dir: str = Field("", description="Write-ahead journal folder; empty turns it off.")
    journal_fsync: Literal["always", "everysec", "off"] = "everysec"
    allow_nodes_without_persistence: bool = Field(
        False,
        description="Accept (with a warning, and in /health) a node without "
        "appendonly yes (on the ring a replica does not count; a cluster master with a "
        "replica connected is accepted); by default start-up refuses it.",
    )
    journal_max_bytes: int = Field(
        64 << 20,
        ge=64 << 10,
        description="Disk the journal reserves at most for sealing the votes it holds "
        "(about 2-3 times their records); past it, votes answer 503 (docs/journal-and-clock.md).",
    )
    debug: bool = False

    @field_validator("redis_nodes")
    @classmethod
    def _nodes_parse(cls, value: str) -> str:
        parse_nodes(value)
        return value

    @field_validator("redis_retiring_nodes")
    @classmethod
    def _retiring_parse(cls, value: str, info: ValidationInfo) -> str:
        if value.strip():
            if not str(info.data.get("redis_nodes", "")).strip():
                raise ValueError("needs REDIS_NODES: the nodes the polls move to")
            parse_nodes(f"{info.data['redis_nodes']},{value}")
        return value

    @field_validator("redis_cluster_url")
    @classmethod
    def _cluster_parse(cls, value: str, info: ValidationInfo) -> str:
        if value.strip():
            parse_cluster_urls(value)
            if str(info.data.get("redis_retiring_nodes", "")).strip():
                raise ValueError("a cluster moves its own slots: leave REDIS_RETIRING_NODES empty")
        return value

    @field_validator("pushpin_publish_urls")
    @classmethod
    def _publish_urls_shape(cls, value: str) -> str:
        for url in (u.strip() for u in value.split(",")):
            if url and not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http(s) URL like http://pushpin:5561/publish/")
        return value

    @field_validator("api_prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        value = value.rstrip("/")
        if value and not value.startswith("/"):
            raise ValueError("must start with '/', like /api/v1")
        return value

    @field_validator("api_token", "voter_secret", "pushpin_grip_key")
    @classmethod
    def _token_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            return None
        return value

    @cached_property
    def publish_urls(self) -> list[str]:
        return [url.strip() for url in self.pushpin_publish_urls.split(",") if url.strip()]

    @cached_property
    def nodes(self) -> list[NodeSpec]:
        """The ring's nodes. Parsed with the retiring ones, so default labels match the old
        ring's (`redis_<port>`) and a label is never used twice."""
        return self._all_nodes[: len(parse_nodes(self.redis_nodes))]

    @cached_property
    def cluster(self) -> NodeSpec | None:
        """The cluster to use instead of the ring, when REDIS_CLUSTER_URL is set (its first
        seed; `cluster_seeds` has them all)."""
        seeds = self.cluster_seeds
        return seeds[0] if seeds else None

    @cached_property
    def cluster_seeds(self) -> list[NodeSpec]:
        if not self.redis_cluster_url.strip():
            return []
        return parse_cluster_urls(self.redis_cluster_url)

    @cached_property
    def durable_wait_ms(self) -> int:
        """WAIT's timeout: the setting, but at most half the socket timeout (a WAIT that
        outlasts the socket would fail the whole round trip)."""
        if self.durable_wait_seconds == 0:
            return 0
        return max(1, int(1000 * min(self.durable_wait_seconds, self.redis_timeout_seconds / 2)))

    @cached_property
    def retiring_nodes(self) -> list[NodeSpec]:
        return self._all_nodes[len(self.nodes) :]

    @cached_property
    def _all_nodes(self) -> list[NodeSpec]:
        if not self.redis_retiring_nodes.strip():
            return parse_nodes(self.redis_nodes)
        return parse_nodes(f"{self.redis_nodes},{self.redis_retiring_nodes}")


def load_settings(**overrides: object) -> Settings:
    """Build the settings, turning a validation error into one message per bad setting."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = str(err["loc"][0]).upper() if err["loc"] else "settings"
            message = err["msg"].removeprefix("Value error, ")
            problems.append(message if message.startswith(name) else f"{name}: {message}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
