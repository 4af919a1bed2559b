"""Settings of the provisioner service (environment prefix ``COMPGRID_PROVISIONER_``).

One process serves one datacenter (``COMPGRID_PROVISIONER_DATACENTER`` or ``--datacenter``);
several processes of one datacenter share its work.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from compgrid_provisioner.domain.domain_xml import Network
from compgrid_runtime.settings import ServiceSettings


class Settings(ServiceSettings):
    """The provisioner service's settings."""

    model_config = SettingsConfigDict(env_prefix="COMPGRID_PROVISIONER_", extra="ignore")
    service_name = "provisioner"

    datacenter: str = Field(
        default="demo-dc", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="the one datacenter served"
    )
    tick_interval_s: float = Field(default=60.0, gt=0, description="usage sampling period")
    reconcile_interval_s: float = Field(default=30.0, gt=0)
    stop_timeout_s: float = Field(default=60.0, ge=0, description="graceful shutdown, then off")
    orphan_grace_s: float = Field(
        default=600.0, ge=0, description="a domain of ours nobody knows is removed after this"
    )
    host_retry_initial_s: float = Field(default=1.0, gt=0)
    host_retry_max_s: float = Field(default=30.0, gt=0)
    host_unreachable_after_s: float = Field(
        default=120.0, ge=0, description="then the host is reported unreachable (marked down)"
    )
    heartbeat_interval_s: float = Field(
        default=10.0, gt=0, le=3600, description="how often the worker announces itself"
    )
    command_ack_wait_s: float = Field(
        default=300.0, gt=0, description="a command not finished by then goes to another worker"
    )
    db_pool_size: int = Field(
        default=33, ge=1, le=200, description="most database connections (2 x commands + 1)"
    )
    usage_retention_days: float = Field(
        default=400.0,
        ge=1,
        description="how long the USAGE stream keeps ticks (metering rebuilds by replaying it)",
    )
    command_concurrency: int = Field(
        default=16, ge=1, le=256, description="commands handled at once (different instances)"
    )
    domain_type: Literal["kvm", "qemu"] = Field(
        default="kvm", description="qemu = software emulation (no KVM on the host)"
    )
    network: str = Field(
        default="network:default", description="none, user, network:<name> or bridge:<name>"
    )
    storage_pool: str = Field(default="compgrid", min_length=1, max_length=64)
    storage_pool_path: str = "/var/lib/libvirt/images/compgrid"
    cloud_init: bool = Field(default=True, description="attach a NoCloud seed to disk images")

    @model_validator(mode="after")
    def _connections_for_every_command(self) -> Settings:
        # A create holds two connections at once (the inbox's transaction and the row it
        # commits before the domain exists); the observe loop takes one more.
        if self.db_pool_size < 2 * self.command_concurrency + 1:
            raise ValueError(
                f"db_pool_size must be at least 2 x command_concurrency + 1 "
                f"({2 * self.command_concurrency + 1}): each command in flight may hold two "
                "connections"
            )
        return self

    @model_validator(mode="after")
    def _orphans_outlast_redelivery(self) -> Settings:
        if self.orphan_grace_s < 2 * self.command_ack_wait_s:
            raise ValueError(
                "orphan_grace_s must be at least twice command_ack_wait_s: a create interrupted "
                "by a crash is redelivered after command_ack_wait_s and must be resumed, not "
                "removed as an orphan"
            )
        return self

    @field_validator("network")
    @classmethod
    def _network_known(cls, value: str) -> str:
        Network(value)
        return value
