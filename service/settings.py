"""Service settings: one pydantic-settings model.

Every field is also a ``serve`` flag (``--max-body-bytes``) and an environment variable
(``LINNAEUS_METRICS_MAX_BODY_BYTES``); the CLI applies flag > environment > settings file
> default (``service.cli.serve.load_settings``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIB = 1024 * 1024
ENV_PREFIX = "LINNAEUS_METRICS_"


class Settings(BaseSettings):
    """Everything the service can be configured with (flags, env, or a YAML settings file)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    host: str = Field("127.0.0.1", description="bind address")
    port: int = Field(8000, ge=0, le=65535, description="port")
    data_dir: Path = Field(Path("./metrics-data"), description="durable state directory (one service per dir)")
    durable: bool = Field(True, description="keep state in SQLite under the data dir (off: memory only, for tests)")
    auth_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="bearer tokens (comma-separated in the environment)")
    max_body_bytes: int = Field(32 * MIB, ge=1024, description="request body limit on every route (413)")
    max_decoded_bytes: int = Field(
        64 * MIB, ge=1024, description="bound on the memory a request's decoded body may take (413)")
    max_events_per_request: int = Field(10_000, ge=1, description="events in one delivery")
    max_samples_per_record: int = Field(65_536, ge=1, description="samples in one batch record")
    max_runs: int = Field(1000, ge=1, description="runs held by the service (429)")
    header_timeout_s: float = Field(10.0, gt=0, description="seconds to receive a request's headers")
    body_timeout_s: float = Field(60.0, gt=0, description="seconds to receive a request's body")
    history_max_points: int = Field(10_000, ge=16, description="points kept per history series")
    finish_timeout_s: float = Field(60.0, gt=0, description="how long POST .../finish waits for sinks")
    shutdown_timeout_s: float = Field(30.0, gt=0, description="how long shutdown waits for requests and sinks")
    checkpoint_wait_max_s: float = Field(60.0, gt=0, description="cap on a checkpoint request's wait_s")
    snapshot_every_events: int = Field(5_000, ge=1, description="events between a run's recovery images")
    wal_checkpoint_interval_s: float = Field(
        30.0, gt=0, description="seconds between SQLite WAL checkpoints into the main file")
    readiness_probe_interval_s: float = Field(
        1.0, ge=0, description="at most one durable probe write per this many seconds")
    sqlite_synchronous: str = Field("FULL", pattern="^(FULL|NORMAL)$", description="SQLite synchronous mode")
    # scale-out (DESIGN §10): a PostgreSQL URL shares the durable state between replicas
    store: str | None = Field(None, pattern=r"^postgres(ql)?://",
                              description="postgresql:// URL of a shared store (default: SQLite under the data dir)")
    store_connect_timeout_s: float = Field(5.0, gt=0, description="seconds to connect to the PostgreSQL store")
    replica_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._:-]{1,128}$",
                                   description="this replica's id in run leases (default: host-pid-random)")
    advertised_url: str | None = Field(None, pattern=r"^https?://[^\s/]+(/\S*)?$",
                                       description="URL other replicas send this replica's clients to")
    lease_ttl_s: float = Field(5.0, ge=0.5, le=300, description="seconds a run lease lasts without renewal")
    wandb_enabled: bool = Field(True, description="forward to Weights & Biases")
    wandb_mode: str | None = Field(None, pattern="^(online|offline|disabled)$",
                                   description="wandb mode (default: online with an API key, else offline)")
    console_enabled: bool = Field(True, description="log scheduled values to the console")
    log_level: str = Field("info", pattern="^(critical|error|warning|info|debug)$", description="log level")
    access_log: bool = Field(False, description="log a line for every HTTP request (thousands a second "
                                                "from a large job: off by default)")
    stream_buffer_events: int = Field(10_000, ge=16, description="events kept per run for stream reconnects")
    stream_reader_queue_events: int = Field(1_000, ge=16, description="events queued per stream reader")
    stream_heartbeat_s: float = Field(15.0, gt=0, description="seconds between stream heartbeats")
    stream_drop_grace_s: float = Field(1.0, ge=0, description="seconds a slow stream reader may lag before it goes")
    stall_alert_s: float = Field(600.0, gt=0, description="seconds without progress before a rank-stalled alert")
    export_run_metrics: bool = Field(False, description="export each run's core values and rank lag on /metrics")
    export_max_runs: int = Field(50, ge=1, description="runs exported on /metrics at most")

    @field_validator("auth_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @field_validator("auth_tokens")
    @classmethod
    def _no_empty_tokens(cls, value: list[str]) -> list[str]:
        if any(not t or len(t) < 8 for t in value):
            raise ValueError("auth tokens must be at least 8 characters")
        return value
