"""Settings, from the environment and `.env`. A bad value stops start-up naming the setting."""

from __future__ import annotations

from functools import cached_property
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core.nodes import NodeSpec, parse_cluster_url, parse_nodes

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
        description="One master of a Redis Cluster (`redis://host:port`): the cluster's slots "
        "shard the polls instead of our ring, and REDIS_NODES is not used.",
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
    fast_vote_path: bool = True
    workers: int = Field(1, ge=1, le=64)
    journal_dir: str = Field("", description="Write-ahead journal folder; empty turns it off.")
    journal_fsync: Literal["always", "everysec", "off"] = "everysec"
    allow_nodes_without_persistence: bool = Field(
        False,
        description="Accept (with a warning, and in /health) a node without "
        "appendonly yes (a replica does not count); by default start-up refuses it.",
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
            parse_cluster_url(value)
            if str(info.data.get("redis_retiring_nodes", "")).strip():
                raise ValueError("a cluster moves its own slots: leave REDIS_RETIRING_NODES empty")
        return value

    @field_validator("api_prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        value = value.rstrip("/")
        if value and not value.startswith("/"):
            raise ValueError("must start with '/', like /api/v1")
        return value

    @field_validator("api_token", "voter_secret")
    @classmethod
    def _token_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            return None
        return value

    @cached_property
    def nodes(self) -> list[NodeSpec]:
        """The ring's nodes. Parsed with the retiring ones, so default labels match the old
        ring's (`redis_<port>`) and a label is never used twice."""
        return self._all_nodes[: len(parse_nodes(self.redis_nodes))]

    @cached_property
    def cluster(self) -> NodeSpec | None:
        """The cluster to use instead of the ring, when REDIS_CLUSTER_URL is set."""
        if not self.redis_cluster_url.strip():
            return None
        return parse_cluster_url(self.redis_cluster_url)

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
