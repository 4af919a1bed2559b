"""Events published by the provisioners: lifecycle results, usage ticks and heartbeats."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated
from uuid import UUID

from pydantic import Field, model_validator

from compgrid_events.base import Contract, Event, RoutingToken, UtcDatetime
from compgrid_events.streams import HEARTBEAT, PROVISIONER, USAGE


class _ProvisionerResult(Event):
    instance_id: UUID
    datacenter: RoutingToken
    host: str
    command_event_id: UUID | None = Field(
        default=None, description="the command this result answers, when it answers one"
    )

    @property
    def aggregate_id(self) -> str:
        return str(self.instance_id)


class InstanceStarted(_ProvisionerResult):
    """The domain runs on its host."""

    subject_template = "provisioner.{datacenter}.instance.started"
    stream = PROVISIONER
    domain_uuid: UUID
    addresses: tuple[str, ...] = ()
    started_at: UtcDatetime


class InstanceStopped(_ProvisionerResult):
    """The domain stopped (on request or on its own)."""

    subject_template = "provisioner.{datacenter}.instance.stopped"
    stream = PROVISIONER
    stopped_at: UtcDatetime
    reason: str = ""


class InstanceFailed(_ProvisionerResult):
    """Creating or running the domain failed; ``reason`` carries the hypervisor's error."""

    subject_template = "provisioner.{datacenter}.instance.failed"
    stream = PROVISIONER
    reason: str


class InstanceDeleted(_ProvisionerResult):
    """The domain and its volumes are gone."""

    subject_template = "provisioner.{datacenter}.instance.deleted"
    stream = PROVISIONER


class HostUnreachable(Event):
    """A host stayed unreachable past the retry window (inventory marks it down)."""

    subject_template = "provisioner.{datacenter}.host.unreachable"
    stream = PROVISIONER
    datacenter: RoutingToken
    host: str
    reason: str


class WorkerHeartbeat(Event):
    """A provisioner worker serves its datacenter; it says so every ``interval_s`` seconds."""

    subject_template = "heartbeat.provisioner.{datacenter}"
    stream = HEARTBEAT
    datacenter: RoutingToken
    worker_id: str = Field(min_length=1, max_length=200, description="unique per process")
    hostname: str = Field(max_length=255)
    pid: int = Field(ge=0)
    started_at: UtcDatetime
    interval_s: float = Field(gt=0, description="the next heartbeat comes this much later")
    stopping: bool = Field(default=False, description="the worker is shutting down")

    @property
    def aggregate_id(self) -> str:
        return self.worker_id


NonNegative = Annotated[Decimal, Field(ge=0)]


class InstanceUsage(Contract):
    """One instance observed running during exactly ``[started_at, ended_at)``."""

    instance_id: UUID
    project_id: UUID
    budget_code_id: UUID
    started_at: UtcDatetime
    ended_at: UtcDatetime
    vcpus: int = Field(gt=0)
    memory_mib: int = Field(gt=0)
    gpus: dict[str, int] = Field(default_factory=dict)
    cpu_time_ns: int = Field(ge=0, description="CPU time the guest used in the interval")
    memory_used_mib: NonNegative = Decimal(0)

    @model_validator(mode="after")
    def _interval_forward(self) -> InstanceUsage:
        if self.ended_at < self.started_at:
            raise ValueError("ended_at is before started_at")
        return self


class UsageTick(Event):
    """One sampling round of one host; ``tick_id`` is deterministic so a resend is recognised."""

    subject_template = "usage.{datacenter}.{host}"
    stream = USAGE
    datacenter: RoutingToken
    host: RoutingToken
    tick_id: str = Field(min_length=1, max_length=200)
    samples: tuple[InstanceUsage, ...]

    @property
    def aggregate_id(self) -> str:
        return f"{self.datacenter}.{self.host}"
