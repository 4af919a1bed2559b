"""The deployment files stay true to the code: commands exist, variables name real settings,
probes hit the ports the services listen on, and the production settings they give validate."""

from __future__ import annotations

import importlib
import re
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import yaml

from compgrid_runtime.mail import SmtpSettings
from compgrid_runtime.natsconf import SERVICES as NATS_USERS
from compgrid_runtime.natsconf import SETUP_USER, password_variable
from compgrid_runtime.settings import Environment, ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("auth", "inventory", "provisioner", "metering", "billing", "gateway")
COMPOSE = ROOT / "deploy" / "compose" / "compose.yaml"
K8S = ROOT / "deploy" / "k8s"


def settings_class(service: str) -> type[ServiceSettings]:
    settings: type[ServiceSettings] = importlib.import_module(f"compgrid_{service}.config").Settings
    return settings


def known_variables() -> set[str]:
    """Every COMPGRID_ variable some service reads (shared or service-prefixed, or an alias)."""
    names: set[str] = set()
    for service in SERVICES:
        cls = settings_class(service)
        for field_name, info in cls.model_fields.items():
            names.add(f"COMPGRID_{field_name.upper()}")
            names.add(f"COMPGRID_{service.upper()}_{field_name.upper()}")
            alias = info.validation_alias
            for choice in getattr(alias, "choices", ()):
                names.add(str(choice).upper())
    names |= {f"COMPGRID_SMTP_{field_name.upper()}" for field_name in SmtpSettings.model_fields}
    names |= {password_variable(user) for user in (*NATS_USERS, SETUP_USER)}  # nats-server's
    return names


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def k8s_documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def console_scripts() -> set[str]:
    return {ep.name for ep in entry_points(group="console_scripts")}


def test_compose_runs_every_service_with_an_existing_command() -> None:
    services = compose()["services"]
    scripts = console_scripts()
    for service in SERVICES:
        command = services[service]["command"]
        assert command == [f"compgrid-{service}"]
        assert command[0] in scripts
    setup = " ".join(services["setup"]["command"])
    assert "compgrid-migrate" in setup
    assert "compgrid-streams ensure" in setup
    assert {"compgrid-migrate", "compgrid-streams"} <= scripts


def test_every_variable_in_the_deploy_files_is_a_real_setting() -> None:
    known = known_variables()
    texts = [
        re.sub(r"#.*", "", path.read_text())  # comments may name placeholders
        for path in (COMPOSE, *K8S.glob("*.yaml"))
    ]
    used = {name for text in texts for name in re.findall(r"\b(COMPGRID_[A-Z_]+)\b", text)}
    assert used, "the deploy files name no settings at all"
    assert used - known == set()


def test_k8s_deploys_every_service_with_probes_on_the_port_it_listens_on() -> None:
    docs = k8s_documents()
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == set(SERVICES)
    for service, deployment in deployments.items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == [f"compgrid-{service}"]
        port = container["readinessProbe"]["httpGet"]["port"]
        assert container["livenessProbe"]["httpGet"]["port"] == port
        expected = 8000 if service == "gateway" else int(config["COMPGRID_HTTP_PORT"])
        assert port == expected
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 25


@pytest.mark.parametrize("service", SERVICES)
def test_compose_production_settings_validate(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = dict(
        line.split("=", 1)
        for line in (ROOT / "deploy/compose/.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    spec = compose()["services"][service]
    for name, value in spec["environment"].items():
        expanded = re.sub(
            r"\$\{(\w+)(?::[?-][^}]*)?\}", lambda m: example.get(m.group(1), ""), str(value)
        )
        monkeypatch.setenv(name, expanded)
    settings = settings_class(service)()
    assert settings.environment is Environment.PRODUCTION
    assert settings.nats_url == "nats://nats:4222"
    assert settings.nats_user == service  # its own NATS user
    assert settings.nats_password is not None
    assert "@postgres:5432/" in settings.database_url


def test_production_without_a_secret_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPGRID_ENVIRONMENT", "production")
    monkeypatch.setenv("COMPGRID_DATABASE_URL", "postgresql+asyncpg://u:p@postgres:5432/compgrid")
    monkeypatch.delenv("COMPGRID_SECRET_KEY", raising=False)
    with pytest.raises(ValueError, match="secret_key"):
        settings_class("inventory")()
