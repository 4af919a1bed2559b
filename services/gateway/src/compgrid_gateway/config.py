"""Settings of the gateway (environment prefix ``COMPGRID_GATEWAY_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from compgrid_runtime.settings import ServiceSettings


class Settings(ServiceSettings):
    """The gateway's settings."""

    model_config = SettingsConfigDict(env_prefix="COMPGRID_GATEWAY_", extra="ignore")
    service_name = "gateway"
    api_port: int = Field(default=8000, ge=0, le=65535)
