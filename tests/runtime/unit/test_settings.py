"""Service settings: own prefix first, then the shared one; production refuses dev values."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from compgrid_runtime.settings import Environment, ServiceSettings


class ExampleSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="COMPGRID_EXAMPLE_", extra="ignore")
    service_name = "example"


def test_shared_variable_fills_in_and_the_service_variable_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COMPGRID_NATS_URL", "nats://shared:4222")
    monkeypatch.setenv("COMPGRID_REDIS_URL", "redis://shared:6379/0")
    monkeypatch.setenv("COMPGRID_EXAMPLE_REDIS_URL", "redis://own:6379/0")
    settings = ExampleSettings()
    assert settings.nats_url == "nats://shared:4222"
    assert settings.redis_url == "redis://own:6379/0"


def test_without_variables_the_development_defaults_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COMPGRID_NATS_URL", "COMPGRID_EXAMPLE_NATS_URL", "COMPGRID_ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)
    settings = ExampleSettings()
    assert settings.nats_url == "nats://127.0.0.1:4222"
    assert settings.environment is Environment.DEVELOPMENT


def test_production_refuses_the_development_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPGRID_ENVIRONMENT", "production")
    monkeypatch.setenv("COMPGRID_DATABASE_URL", "postgresql+asyncpg://app:pw@db:5432/compgrid")
    monkeypatch.delenv("COMPGRID_SECRET_KEY", raising=False)
    with pytest.raises(ValidationError, match="secret_key must be set"):
        ExampleSettings()
    monkeypatch.setenv("COMPGRID_SECRET_KEY", "a real secret from the environment")
    assert ExampleSettings().environment is Environment.PRODUCTION


def test_a_bad_value_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPGRID_EXAMPLE_DB_POOL_SIZE", "0")
    with pytest.raises(ValidationError, match="db_pool_size"):
        ExampleSettings()
