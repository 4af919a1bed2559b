"""Settings of the auth service (environment prefix ``COMPGRID_AUTH_``).

The first admin comes from ``COMPGRID_ADMIN_EMAIL`` / ``COMPGRID_ADMIN_PASSWORD``; production
mode refuses to start without them (and without a real ``secret_key``).
"""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from compgrid_runtime.settings import Environment, ServiceSettings


class Settings(ServiceSettings):
    """The auth service's settings."""

    model_config = SettingsConfigDict(env_prefix="COMPGRID_AUTH_", extra="ignore")
    service_name = "auth"

    db_pool_size: int = Field(
        default=4, ge=1, le=100, description="most database connections the process opens"
    )

    access_ttl_s: int = Field(default=900, ge=30, le=86_400)
    refresh_ttl_s: int = Field(default=14 * 86_400, ge=60)
    reset_ttl_s: int = Field(default=3600, ge=60)
    invitation_ttl_s: int = Field(default=7 * 86_400, ge=60)
    public_url: str = "http://127.0.0.1:8000"
    redis_prefix: str = ""
    admin_email: str | None = Field(
        default=None, validation_alias=AliasChoices("COMPGRID_ADMIN_EMAIL", "admin_email")
    )
    admin_password: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("COMPGRID_ADMIN_PASSWORD", "admin_password")
    )

    @model_validator(mode="after")
    def _first_admin_in_production(self) -> Settings:
        if self.environment is Environment.PRODUCTION and not (
            self.admin_email and self.admin_password
        ):
            raise ValueError("COMPGRID_ADMIN_EMAIL and COMPGRID_ADMIN_PASSWORD must be set")
        return self
