"""Settings of the metering service (environment prefix ``COMPGRID_METERING_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from compgrid_runtime.settings import ServiceSettings


class Settings(ServiceSettings):
    """The metering service's settings."""

    model_config = SettingsConfigDict(env_prefix="COMPGRID_METERING_", extra="ignore")
    service_name = "metering"

    db_pool_size: int = Field(
        default=4, ge=1, le=100, description="most database connections the process opens"
    )

    redis_prefix: str = Field(
        default="compgrid:metering:", description="every metering key starts with this"
    )
    dedup_ttl_s: int = Field(
        default=30 * 86_400,
        ge=3600,
        description="how long an applied tick's id is remembered (re-sent ticks come sooner)",
    )
    usage_batch_size: int = Field(default=256, ge=1, le=4096)
    usage_ack_wait_s: float = Field(
        default=10.0, gt=0, description="a batch not acknowledged by then goes to another process"
    )
    usage_retry_for_s: float = Field(
        default=6 * 3600.0,
        gt=0,
        description="how long a tick is retried while Redis is unreachable before dead-letter",
    )
    rollup_interval_s: float = Field(default=60.0, gt=0, description="how often hours close")
    rollup_lateness_s: float = Field(
        default=300.0,
        ge=0,
        description="an hour closes this long after it ended; later usage corrects it",
    )
    idle_cpu_percent: float = Field(
        default=5.0, gt=0, le=100, description="below this CPU use an instance counts as idle"
    )
    idle_after_s: float = Field(
        default=4 * 3600.0, gt=0, description="idle this long: InstanceIdle is published"
    )
    owner_timeout_s: float = Field(
        default=3.0, gt=0, le=30, description="asking auth which budget code a code names"
    )
