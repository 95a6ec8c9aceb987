"""Every setting in one typed place; each reads ``STREAMREC_<NAME>`` from the environment.

Command-line options override the environment, which overrides the defaults here.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from store.engine import DEFAULT_STORE_URL


class Settings(BaseSettings):
    """streamrec settings (environment prefix ``STREAMREC_``).

    >>> Settings(topic="clicks").topic
    'clicks'
    """

    model_config = SettingsConfigDict(env_prefix="STREAMREC_", extra="ignore")

    store: str = Field(DEFAULT_STORE_URL, description="SQLAlchemy URL of the store")
    bootstrap: str | None = Field(None, description="Kafka HOST:PORT")
    topic: str = Field("events", description="topic of interaction events")
    group: str = Field("streamrec-ingest", description="consumer group of `ingest`")
    partitions: int = Field(4, ge=1, description="partitions of a topic `produce` creates")
    batch_size: int = Field(2000, ge=1, description="records per poll and per DB transaction")
    dead_letter_topic: str | None = Field(None, description="also forward dead letters here")
    kafka_max_poll_interval_ms: int = Field(
        30_000, ge=1000, description="Kafka max.poll.interval.ms; the local broker's first "
        "JoinGroup waits about this long, so development setups keep it small",
    )
    retrain_token: str | None = Field(
        None, description="bearer token that authorises POST /retrain of the HTTP API"
    )
    api_workers: int = Field(
        1, ge=1, description="server processes of `serve` (each loads the active version; "
        "they share its ANN index through `index_cache`; retrain jobs are shared through "
        "the store)",
    )
    index_cache: str | None = Field(
        None, description="directory where `serve` keeps each version's built HNSW index, "
        "so that its worker processes (and restarts) read one build back instead of each "
        "building its own (None: `index-cache` beside a SQLite file store, else "
        "./var/index-cache; empty: no cache, every worker builds)",
    )
    drift_retrain: bool = Field(
        False, description="ingest watches hit-rate drift and requests early retrains"
    )
    torch_threads: int = Field(
        1, ge=1, description="torch CPU threads of the ingest process's updater; one thread "
        "avoids OpenMP oversubscription beside the consumer and writer threads",
    )
    settle_every: int = Field(
        5000, ge=1, description="events the live updater folds in fast (arrival order) "
        "before it settles them into the canonical order that makes the overlay the same "
        "for any number of ingest processes; it also settles whenever the stream pauses for "
        "a second. Larger: cheaper and fewer update pauses, longer between canonical states",
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="port on which `ingest` serves Prometheus metrics "
        "at /metrics (None or 0: not served; `run` serves them through its HTTP API)",
    )
    log_level: str = Field("INFO", description="logging level")

    def merged(self, **overrides: object) -> Settings:
        """A copy with the non-None ``overrides`` applied (command-line options)."""
        return self.model_copy(update={k: v for k, v in overrides.items() if v is not None})
