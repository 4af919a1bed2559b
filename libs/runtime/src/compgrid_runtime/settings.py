"""Settings shared by every CompGrid service process.

Each service subclasses :class:`ServiceSettings` with its own env prefix (``COMPGRID_AUTH_``,
``COMPGRID_INVENTORY_`` …). A value the services share may be given once without the service
part (``COMPGRID_NATS_URL``, ``COMPGRID_ENVIRONMENT``); the service's own variable wins.
Every setting has a safe development default; in production mode development-only values
(the demo secrets, embedded URLs) are refused at start-up.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

SHARED_PREFIX = "COMPGRID_"


class Environment(StrEnum):
    """Where the process runs."""

    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


DEV_SECRET = "compgrid-development-only"


class ServiceSettings(BaseSettings):
    """What every service process needs: where Postgres, NATS and Redis are, and how to behave."""

    model_config = SettingsConfigDict(env_prefix=SHARED_PREFIX, extra="ignore", secrets_dir=None)

    service_name: ClassVar[str] = "service"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Read ``COMPGRID_<SERVICE>_X`` first, then the shared ``COMPGRID_X``."""
        shared = EnvSettingsSource(settings_cls, env_prefix=SHARED_PREFIX)
        return init_settings, env_settings, shared, dotenv_settings, file_secret_settings

    environment: Environment = Environment.DEVELOPMENT
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/compgrid"
    db_pool_size: int = Field(
        default=10,
        ge=1,
        le=100,
        description="most database connections the process opens (each service sets its own "
        "default; Postgres' max_connections must cover the sum over every process)",
    )
    nats_url: str = "nats://127.0.0.1:4222"
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"
    stream_replicas: int = Field(default=1, ge=1, le=5)
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port")
    log_level: str = "INFO"
    log_json: bool = True
    otel_exporter_otlp_endpoint: str | None = None
    outbox_batch_size: int = Field(default=256, ge=1, le=10_000)
    outbox_poll_interval_s: float = Field(default=0.5, gt=0)
    shutdown_grace_s: float = Field(default=20.0, ge=0)
    rpc_max_workers: int = Field(
        default=16, ge=1, le=1000, description="requests one operation answers at once"
    )
    secret_key: SecretStr = SecretStr(DEV_SECRET)

    @model_validator(mode="after")
    def _refuse_development_values_in_production(self) -> ServiceSettings:
        if self.environment is Environment.PRODUCTION:
            if self.secret_key.get_secret_value() == DEV_SECRET:
                raise ValueError("secret_key must be set in production (it has the dev default)")
            if "@127.0.0.1" in self.database_url and "postgres@" in self.database_url:
                raise ValueError("database_url must be set in production")
        return self
