"""Service settings: one pydantic-settings model; every field is also ``LINNAEUS_METRICS_<NAME>``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIB = 1024 * 1024


class Settings(BaseSettings):
    """Everything the service can be configured with (flags, env, or a YAML settings file)."""

    model_config = SettingsConfigDict(env_prefix="LINNAEUS_METRICS_", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    data_dir: Path = Path("./metrics-data")
    durable: bool = True
    auth_tokens: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = Field(32 * MIB, ge=1024)
    max_events_per_request: int = Field(10_000, ge=1)
    max_samples_per_record: int = Field(65_536, ge=1)
    max_runs: int = Field(1000, ge=1)
    history_max_points: int = Field(10_000, ge=16)
    finish_timeout_s: float = Field(60.0, gt=0)
    shutdown_timeout_s: float = Field(30.0, gt=0)
    checkpoint_wait_max_s: float = Field(60.0, gt=0)
    snapshot_every_events: int = Field(5_000, ge=1)
    sqlite_synchronous: str = Field("FULL", pattern="^(FULL|NORMAL)$")
    # scale-out (DESIGN §10): a PostgreSQL URL shares the durable state between replicas
    store: str | None = Field(None, pattern=r"^postgres(ql)?://")
    store_connect_timeout_s: float = Field(5.0, gt=0)
    replica_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._:-]{1,128}$")
    advertised_url: str | None = Field(None, pattern=r"^https?://[^\s/]+(/\S*)?$")
    lease_ttl_s: float = Field(5.0, ge=0.5, le=300)
    wandb_enabled: bool = True
    wandb_mode: str | None = Field(None, pattern="^(online|offline|disabled)$")
    console_enabled: bool = True
    log_level: str = Field("info", pattern="^(critical|error|warning|info|debug)$")
    stream_buffer_events: int = Field(10_000, ge=16)
    stream_reader_queue_events: int = Field(1_000, ge=16)
    stream_heartbeat_s: float = Field(15.0, gt=0)
    stream_drop_grace_s: float = Field(1.0, ge=0)
    stall_alert_s: float = Field(600.0, gt=0)
    export_run_metrics: bool = False
    export_max_runs: int = Field(50, ge=1)

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
