"""Settings of the metering service (environment prefix ``COMPGRID_METERING_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from compgrid_runtime.settings import ServiceSettings


class Settings(ServiceSettings):
    """The metering service's settings."""

    model_config = SettingsConfigDict(env_prefix="COMPGRID_METERING_", extra="ignore")
    service_name = "metering"
