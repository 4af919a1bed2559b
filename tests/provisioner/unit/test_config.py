"""Provisioner settings: the network mode and the datacenter name are validated at start-up."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from compgrid_events.streams import USAGE, streams_owned_by
from compgrid_provisioner.bootstrap import owned_streams
from compgrid_provisioner.config import Settings

_VARIABLES = ("NETWORK", "DATACENTER", "DOMAIN_TYPE", "ENVIRONMENT")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _VARIABLES:
        monkeypatch.delenv(f"COMPGRID_PROVISIONER_{name}", raising=False)
        monkeypatch.delenv(f"COMPGRID_{name}", raising=False)


def test_defaults_are_valid() -> None:
    settings = Settings()
    assert settings.network == "network:default"
    assert settings.datacenter == "demo-dc"
    assert settings.domain_type == "kvm"


@pytest.mark.parametrize("network", ["none", "user", "network:lab", "bridge:br0"])
def test_documented_network_modes_are_accepted(network: str) -> None:
    assert Settings(network=network).network == network


@pytest.mark.parametrize("network", ["wifi", "", "bridge:", "network", "user:eth0", "macvtap:eth0"])
def test_invalid_network_is_rejected_with_a_clear_error(network: str) -> None:
    with pytest.raises(ValidationError) as exc:
        Settings(network=network)
    errors = exc.value.errors()
    assert [error["loc"] for error in errors] == [("network",)]
    assert "use none, user, network:<name> or bridge:<name>" in str(exc.value)
    assert repr(network) in str(exc.value)


def test_invalid_network_from_the_environment_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPGRID_PROVISIONER_NETWORK", "wlan0")
    with pytest.raises(ValidationError, match="use none, user, network:<name> or bridge:<name>"):
        Settings()


def test_network_from_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPGRID_PROVISIONER_NETWORK", "bridge:br-lab")
    assert Settings().network == "bridge:br-lab"


@pytest.mark.parametrize("datacenter", ["eu-west_1", "DC2", "a", "x" * 64])
def test_datacenter_that_is_a_subject_token_is_accepted(datacenter: str) -> None:
    assert Settings(datacenter=datacenter).datacenter == datacenter


@pytest.mark.parametrize(
    "datacenter", ["", "eu.west", "dc*", "dc>", "dc 1", "dc\t1", "dc/1", "x" * 65, "dç"]
)
def test_datacenter_that_is_not_a_subject_token_is_rejected(datacenter: str) -> None:
    with pytest.raises(ValidationError) as exc:
        Settings(datacenter=datacenter)
    assert [error["loc"] for error in exc.value.errors()] == [("datacenter",)]


def test_datacenter_from_the_environment_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPGRID_PROVISIONER_DATACENTER", "eu.west.1")
    with pytest.raises(ValidationError) as exc:
        Settings()
    assert [error["loc"] for error in exc.value.errors()] == [("datacenter",)]


def test_unknown_domain_type_is_rejected() -> None:
    with pytest.raises(ValidationError) as exc:
        Settings(domain_type="xen")
    assert [error["loc"] for error in exc.value.errors()] == [("domain_type",)]


def test_the_usage_stream_keeps_ticks_as_long_as_configured() -> None:
    streams = {s.name: s for s in owned_streams(Settings(usage_retention_days=30))}
    assert streams[USAGE.name].max_age_s == 30 * 86_400
    defaults = {s.name: s for s in streams_owned_by("provisioner")}
    assert set(streams) == set(defaults)
    assert all(streams[n] == defaults[n] for n in streams if n != USAGE.name)
    assert {s.name: s for s in owned_streams(Settings())}[USAGE.name].max_age_s == 400 * 86_400
