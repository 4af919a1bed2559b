"""Settings of the billing service (environment prefix ``COMPGRID_BILLING_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from compgrid_runtime.settings import ServiceSettings


class Settings(ServiceSettings):
    """The billing service's settings."""

    model_config = SettingsConfigDict(env_prefix="COMPGRID_BILLING_", extra="ignore")
    service_name = "billing"
