"""Settings of the inventory service (environment prefix ``COMPGRID_INVENTORY_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from compgrid_runtime.settings import ServiceSettings


class Settings(ServiceSettings):
    """The inventory service's settings."""

    model_config = SettingsConfigDict(env_prefix="COMPGRID_INVENTORY_", extra="ignore")
    service_name = "inventory"

    db_pool_size: int = Field(
        default=10, ge=1, le=100, description="most database connections the process opens"
    )

    admission_horizon_hours: float = Field(
        default=24.0, gt=0, le=24 * 366, description="hold = hourly price times this (or the lease)"
    )
    default_max_instances: int | None = Field(default=20, ge=0)
    default_max_vcpus: int | None = Field(default=64, ge=0)
    default_max_memory_mib: int | None = Field(default=256 * 1024, ge=0)
    default_max_gpus: int | None = Field(default=4, ge=0)
    lease_warn_before_s: float = Field(default=24 * 3600.0, ge=0)
    lease_grace_s: float = Field(default=7 * 24 * 3600.0, ge=0, description="stopped → deleted")
    lease_check_interval_s: float = Field(default=60.0, gt=0)
    owner_timeout_s: float = Field(
        default=3.0, gt=0, le=30, description="reading through to auth for a new budget code"
    )
    repair_interval_s: float = Field(default=300.0, gt=0)
    command_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="a command no live provisioner worker took up by then fails its instance",
    )
    command_check_interval_s: float = Field(default=10.0, gt=0)
