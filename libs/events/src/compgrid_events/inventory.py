"""Events published by the inventory: instance lifecycle, provisioning commands, hosts, prices.

Provisioning commands travel on ``provision.<datacenter>.instance.<command>`` so that each
datacenter's provisioner consumes only its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated
from uuid import UUID

from pydantic import Field

from compgrid_events.base import Contract, Currency, Event, RoutingToken, UtcDatetime
from compgrid_events.streams import INVENTORY, PROVISION


def projected_cost(
    hourly: Decimal, horizon: timedelta, now: datetime, lease_ends_at: datetime | None
) -> Decimal:
    """Return the hold for a request: its price over the horizon or until its lease ends."""
    span = horizon if lease_ends_at is None else max(min(horizon, lease_ends_at - now), timedelta())
    return (hourly * Decimal(span.total_seconds()) / Decimal(3600)).quantize(Decimal("0.000001"))


class InstanceState(StrEnum):
    """The instance lifecycle."""

    PENDING_APPROVAL = "pending_approval"
    REQUESTED = "requested"
    SCHEDULED = "scheduled"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    DELETING = "deleting"
    DELETED = "deleted"
    FAILED = "failed"
    REJECTED = "rejected"


class HostState(StrEnum):
    """Whether a host takes new work."""

    ACTIVE = "active"
    MAINTENANCE = "maintenance"
    DOWN = "down"


PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]


class GpuCount(Contract):
    """A number of GPUs of one model."""

    model: str = Field(min_length=1, max_length=64)
    count: PositiveInt


class Resources(Contract):
    """The size of an instance."""

    vcpus: PositiveInt
    memory_mib: PositiveInt
    disk_gib: NonNegativeInt
    gpus: tuple[GpuCount, ...] = ()


class _InstanceEvent(Event):
    instance_id: UUID
    version: int = Field(ge=1, description="per-instance version; never moves backwards")

    @property
    def aggregate_id(self) -> str:
        return str(self.instance_id)


class InstanceRequested(_InstanceEvent):
    """A researcher asked for an instance and admission accepted it."""

    subject_template = "inventory.instance.requested"
    stream = INVENTORY
    name: str
    project_id: UUID
    budget_code_id: UUID
    requested_by: UUID
    instance_type: str
    image: str
    resources: Resources
    hourly_price: Decimal
    currency: Currency
    lease_ends_at: UtcDatetime | None = None
    price_tier_id: UUID | None = Field(
        default=None, description="the tier whose effective rates price the instance's usage"
    )
    held_amount: Decimal | None = Field(
        default=None, ge=0, description="the admission hold placed on the budget code"
    )


class ApprovalRequested(_InstanceEvent):
    """A request waits in ``pending_approval`` for the project's PI (notifies the PIs)."""

    subject_template = "inventory.instance.approval_requested"
    stream = INVENTORY
    name: str
    project_id: UUID
    requested_by: UUID
    instance_type: str
    hourly_price: Decimal
    currency: Currency
    why: str = Field(description="what made the request need approval")


class ApprovalDecided(_InstanceEvent):
    """A PI approved or denied a waiting request (notifies the requester)."""

    subject_template = "inventory.instance.approval_decided"
    stream = INVENTORY
    project_id: UUID
    requested_by: UUID
    decided_by: UUID
    approved: bool
    reason: str = ""


class LeaseExpiring(_InstanceEvent):
    """An instance's lease ends soon: it is stopped then, and deleted after the grace period."""

    subject_template = "inventory.instance.lease_expiring"
    stream = INVENTORY
    name: str
    project_id: UUID
    owner: UUID
    lease_ends_at: UtcDatetime
    deleted_after: UtcDatetime


class InstanceRejected(_InstanceEvent):
    """A request was refused (quota, budget, no capacity, denied) with the reason."""

    subject_template = "inventory.instance.rejected"
    stream = INVENTORY
    project_id: UUID
    reason_code: str
    reason: str


class InstanceStateChanged(_InstanceEvent):
    """The instance moved to a new lifecycle state (drives live updates)."""

    subject_template = "inventory.instance.state_changed"
    stream = INVENTORY
    project_id: UUID
    state: InstanceState
    reason: str = ""
    reason_code: str | None = Field(
        default=None, description="stable code of the reason (e.g. budget_exhausted)"
    )


class _ProvisionCommand(_InstanceEvent):
    datacenter: RoutingToken
    host: str


class InstanceScheduled(_ProvisionCommand):
    """Placement chose a host: the datacenter's provisioner must create and start it."""

    subject_template = "provision.{datacenter}.instance.scheduled"
    stream = PROVISION
    host_uri: str
    name: str
    project_id: UUID
    budget_code_id: UUID
    resources: Resources
    image: str
    image_source: str = Field(default="", description="path or URL on the provisioner side")
    image_format: str = "qcow2"
    default_user: str = "compgrid"
    ssh_public_key: str | None = None


class InstanceStartRequested(_ProvisionCommand):
    """Start a stopped instance."""

    subject_template = "provision.{datacenter}.instance.start_requested"
    stream = PROVISION


class InstanceStopRequested(_ProvisionCommand):
    """Stop a running instance (graceful, then forced after the timeout)."""

    subject_template = "provision.{datacenter}.instance.stop_requested"
    stream = PROVISION
    reason: str = ""


class InstanceRebootRequested(_ProvisionCommand):
    """Reboot a running instance."""

    subject_template = "provision.{datacenter}.instance.reboot_requested"
    stream = PROVISION


class InstanceDeleteRequested(_ProvisionCommand):
    """Delete an instance and its volumes."""

    subject_template = "provision.{datacenter}.instance.delete_requested"
    stream = PROVISION


GPU_PCI_LABEL = "gpu.pci."
"""The host label naming a GPU model's PCI devices, ``gpu.pci.<model>`` = comma-separated PCI
addresses (``0000:81:00.0,0000:82:00.0``): the provisioner passes them through to instances."""
_PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


def gpu_devices(labels: Mapping[str, str], model: str) -> list[str]:
    """The PCI addresses a host's labels give for one GPU model, in the order listed."""
    listed = labels.get(GPU_PCI_LABEL + model, "")
    return [address.strip().lower() for address in listed.split(",") if address.strip()]


def gpu_devices_problem(gpus: Mapping[str, int], labels: Mapping[str, str]) -> str | None:
    """What is wrong with a host's GPU devices (each GPU needs its PCI address), or None."""
    for model, count in sorted(gpus.items()):
        if count == 0:
            continue
        label = GPU_PCI_LABEL + model
        devices = gpu_devices(labels, model)
        if len(devices) != count:
            return (
                f"the host has {count} {model} GPU(s): label {label} must list their {count} "
                f"PCI address(es), comma-separated; it lists {len(devices)}"
            )
        for address in devices:
            if not _PCI_ADDRESS.match(address):
                return f"label {label}: {address!r} is not a PCI address like 0000:81:00.0"
        if len(set(devices)) != len(devices):
            return f"label {label} lists a PCI address twice"
    for key in sorted(labels):
        model = key.removeprefix(GPU_PCI_LABEL)
        if key.startswith(GPU_PCI_LABEL) and not gpus.get(model):
            return f"label {key} names devices of a GPU model the host does not have"
    return None


class HostRegistered(Event):
    """A host joined a datacenter or changed; its full state, for that datacenter's provisioner."""

    subject_template = "inventory.host.{datacenter}.registered"
    stream = INVENTORY
    host_id: UUID
    name: str
    datacenter: RoutingToken
    libvirt_uri: str
    state: HostState
    capacity: Resources
    labels: dict[str, str] = Field(default_factory=dict)
    version: int = Field(default=1, ge=1, description="grows with every change of the host")

    @property
    def aggregate_id(self) -> str:
        return str(self.host_id)


class PriceTierChanged(Event):
    """A price tier got new rates from a date on (history is kept)."""

    subject_template = "inventory.price_tier.changed"
    stream = INVENTORY
    price_tier_id: UUID
    name: str
    currency: Currency
    effective_from: UtcDatetime
    vcpu_hour_amount: Decimal = Field(ge=0)
    memory_gib_hour_amount: Decimal = Field(ge=0)
    storage_gib_month_amount: Decimal = Field(ge=0)
    gpu_hour_amounts: dict[str, Decimal] = Field(default_factory=dict)

    @property
    def aggregate_id(self) -> str:
        return str(self.price_tier_id)
