"""Request and reply bodies of the inventory's request/reply operations (``rpc.inventory.*``).

The gateway exposes the same models over HTTP. Sizes have upper bounds so absurd input is
refused with the field named before anything is looked up.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated
from uuid import UUID

from pydantic import AfterValidator, Field, StringConstraints

from compgrid_events.auth_api import BudgetCodeKey, Limit, Page
from compgrid_events.base import Contract, Currency, Money, MoneyLimit, RoutingToken, UtcDatetime
from compgrid_events.inventory import HostState, InstanceState

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
"""A name people type and the provisioner uses in domain names: no spaces, no slashes."""
Text = Annotated[str, Field(max_length=500)]
Rate = Annotated[Decimal, Field(ge=0, le=1_000_000, max_digits=18, decimal_places=6)]
"""A price per unit-hour: at most a million, so a type's price and its holds stay storable."""
Vcpus = Annotated[int, Field(gt=0, le=1024)]
MemoryMib = Annotated[int, Field(gt=0, le=16 * 1024 * 1024)]
DiskGib = Annotated[int, Field(ge=0, le=1024 * 1024)]
GpuMap = dict[
    Annotated[str, Field(min_length=1, max_length=64)], Annotated[int, Field(gt=0, le=64)]
]
Labels = dict[
    Annotated[str, Field(min_length=1, max_length=64)], Annotated[str, Field(max_length=1000)]
]
"""Free-form host and instance labels; long enough for a host's GPU PCI addresses."""
Cursor = Annotated[str | None, Field(default=None, max_length=100)]


def _openssh_public_key(value: str) -> str:
    value = value.strip()
    parts = value.split()
    if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-", "sk-")) or "\n" in value:
        raise ValueError("not an OpenSSH public key (one line: type, key, comment)")
    return value


SshPublicKey = Annotated[str, Field(max_length=16_384), AfterValidator(_openssh_public_key)]

__all__ = ["Page"]


class Strategy(Contract):
    """Placement weighing of a datacenter."""

    placement: str = Field(default="pack", pattern=r"^(pack|spread)$")


class CreateDatacenter(Strategy):
    """A datacenter: a name the provisioner routes by, and how hosts are weighed there."""

    name: RoutingToken
    description: Text = ""


class UpdateDatacenter(Contract):
    """Change how a datacenter weighs its hosts, or its description."""

    datacenter: RoutingToken
    placement: str | None = Field(default=None, pattern=r"^(pack|spread)$")
    description: Text | None = None


class WorkerPublic(Contract):
    """A provisioner worker of a datacenter and when it was last heard from."""

    worker_id: str
    hostname: str
    started_at: UtcDatetime
    last_seen_at: UtcDatetime
    live: bool = Field(description="heard from recently and not stopping: it takes commands")


class DatacenterPublic(Contract):
    """A datacenter."""

    id: UUID
    name: str
    description: str
    placement: str
    hosts: int = 0
    workers: list[WorkerPublic] = Field(
        default_factory=list, description="provisioner workers heard from in the last day"
    )


class HostCapacity(Contract):
    """What a host has: its size and the overcommit ratios applied to it."""

    vcpus: Vcpus
    memory_mib: MemoryMib
    disk_gib: DiskGib
    gpus: GpuMap = Field(default_factory=dict)
    cpu_overcommit: Decimal = Field(default=Decimal("4.0"), ge=1, le=16, decimal_places=2)
    memory_overcommit: Decimal = Field(default=Decimal("1.0"), ge=1, le=4, decimal_places=2)


class RegisterHost(HostCapacity):
    """A hypervisor host joins a datacenter."""

    datacenter: RoutingToken
    name: RoutingToken
    libvirt_uri: str = Field(min_length=1, max_length=500, pattern=r"^[a-z0-9+]+://")
    labels: Labels = Field(default_factory=dict)
    state: HostState = HostState.ACTIVE


class UpdateHost(Contract):
    """Change a host; every field is optional, ``expected_version`` guards lost updates."""

    host_id: UUID
    expected_version: int | None = Field(default=None, ge=1)
    state: HostState | None = None
    libvirt_uri: str | None = Field(default=None, min_length=1, max_length=500)
    vcpus: Vcpus | None = None
    memory_mib: MemoryMib | None = None
    disk_gib: DiskGib | None = None
    gpus: GpuMap | None = None
    cpu_overcommit: Decimal | None = Field(default=None, ge=1, le=16, decimal_places=2)
    memory_overcommit: Decimal | None = Field(default=None, ge=1, le=4, decimal_places=2)
    labels: Labels | None = None


class HostRef(Contract):
    """Names one host."""

    host_id: UUID


class ListHosts(Contract):
    """Filter hosts."""

    datacenter: RoutingToken | None = None
    state: HostState | None = None
    after: Cursor = None
    limit: Limit = 100


class HostPublic(Contract):
    """A host with what is claimed on it."""

    id: UUID
    datacenter: str
    name: str
    libvirt_uri: str
    state: HostState
    vcpus: int
    memory_mib: int
    disk_gib: int
    gpus: dict[str, int]
    cpu_overcommit: Decimal
    memory_overcommit: Decimal
    labels: dict[str, str]
    claimed_vcpus: int
    claimed_memory_mib: int
    claimed_disk_gib: int
    claimed_gpus: dict[str, int]
    instances: int = 0
    version: int


class CreateImage(Contract):
    """A bootable image the provisioners can find at ``source``."""

    name: Name
    system_type: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9._-]+$")]
    format: str = Field(default="qcow2", pattern=r"^(qcow2|raw)$")
    source: str = Field(min_length=1, max_length=1000)
    default_user: str = Field(default="compgrid", min_length=1, max_length=64)
    description: Text = ""


class ImagePublic(Contract):
    """An image."""

    id: UUID
    name: str
    system_type: str
    format: str
    source: str
    default_user: str
    description: str


class Rates(Contract):
    """Rates per resource-hour (storage per GiB-month) in the tier's currency."""

    vcpu_hour: Rate
    memory_gib_hour: Rate
    storage_gib_month: Rate = Decimal(0)
    gpu_hour: dict[Annotated[str, Field(min_length=1, max_length=64)], Rate] = Field(
        default_factory=dict
    )


class CreatePriceTier(Contract):
    """A named price tier with its first rates."""

    name: Name
    currency: Currency
    effective_from: UtcDatetime
    rates: Rates


class AddRates(Contract):
    """New rates for a tier from a date on (a past date corrects history: billing re-rates)."""

    price_tier_id: UUID
    effective_from: UtcDatetime
    rates: Rates


class PriceTierRef(Contract):
    """Names one price tier."""

    price_tier_id: UUID


class RatesFrom(Contract):
    """Rates and the date they apply from."""

    effective_from: datetime
    rates: Rates


class PriceTierPublic(Contract):
    """A price tier: the rates in effect now and the whole history."""

    id: UUID
    name: str
    currency: str
    current: RatesFrom | None
    history: list[RatesFrom]


class CreateInstanceType(Contract):
    """A size researchers can ask for, priced by a tier."""

    name: Name
    vcpus: Vcpus
    memory_mib: MemoryMib
    disk_gib: DiskGib
    gpus: GpuMap = Field(default_factory=dict)
    system_types: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=50, description="empty: any image"
    )
    price_tier_id: UUID
    description: Text = ""


class InstanceTypeRef(Contract):
    """Names one instance type."""

    instance_type_id: UUID


class ListInstanceTypes(Contract):
    """List instance types (retired ones only when asked)."""

    include_retired: bool = False


class InstanceTypePublic(Contract):
    """An instance type with its hourly price derived from its tier's current rates."""

    id: UUID
    name: str
    vcpus: int
    memory_mib: int
    disk_gib: int
    gpus: dict[str, int]
    system_types: list[str]
    price_tier_id: UUID
    price_tier: str
    hourly_price: Money | None
    description: str
    retired_at: datetime | None


class RequestInstance(Contract):
    """A researcher asks for an instance."""

    name: Name
    project_id: UUID
    budget_code_id: BudgetCodeKey
    instance_type: str = Field(min_length=1, max_length=64, description="type name or id")
    image: str = Field(min_length=1, max_length=64, description="image name or id")
    datacenter: RoutingToken | None = None
    labels: Labels = Field(default_factory=dict, description="hosts must carry these labels")
    ssh_public_key: SshPublicKey | None = None
    lease_ends_at: UtcDatetime | None = None


class Requirements(Contract):
    """What the instance needs, instead of a type name."""

    min_vcpus: Vcpus
    min_memory_gib: Annotated[Decimal, Field(gt=0, le=16 * 1024)]
    min_disk_gib: DiskGib = 0
    system_type: str = Field(min_length=1, max_length=64)
    max_hourly_price: Annotated[Decimal, Field(gt=0, max_digits=18, decimal_places=6)] | None = None
    gpus: GpuMap = Field(default_factory=dict)


class RequestByRequirements(Contract):
    """Ask for the cheapest type that meets the requirements and can be placed now."""

    name: Name
    project_id: UUID
    budget_code_id: BudgetCodeKey
    requirements: Requirements
    image: str | None = Field(
        default=None, min_length=1, max_length=64, description="default: newest of the system type"
    )
    datacenter: RoutingToken | None = None
    ssh_public_key: SshPublicKey | None = None
    lease_ends_at: UtcDatetime | None = None


class InstanceRef(Contract):
    """Names one instance."""

    instance_id: UUID


class Decide(InstanceRef):
    """A PI's decision on a waiting request."""

    reason: str = Field(default="", max_length=500)


class Deny(InstanceRef):
    """A PI denies a waiting request; the reason goes to the requester."""

    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


class SetLease(InstanceRef):
    """Move an instance's lease end (None: no lease)."""

    lease_ends_at: UtcDatetime | None


class ListInstances(Contract):
    """Filter and page through the instances the caller may see."""

    project_id: UUID | None = None
    state: InstanceState | None = None
    datacenter: RoutingToken | None = None
    host_id: UUID | None = None
    name: str | None = Field(default=None, max_length=64, description="substring")
    mine: bool = False
    sort: str = Field(
        default="-created_at",
        pattern=r"^-?(created_at)$",
        description="created_at: oldest first; -created_at: newest first",
    )
    after: Cursor = None
    limit: Limit = 50


class InstanceHold(Contract):
    """What admission set aside on the budget code for an instance: its hourly price over the
    admission horizon, or until its lease ends when that is sooner."""

    amount: Money
    hours: Decimal = Field(description="the horizon the amount pays for")
    until: datetime = Field(description="the end of the horizon")


class InstancePublic(Contract):
    """An instance as its owners see it."""

    id: UUID
    name: str
    project_id: UUID
    budget_code_id: UUID
    requested_by: UUID
    instance_type: str
    image: str
    vcpus: int
    memory_mib: int
    disk_gib: int
    gpus: dict[str, int]
    hourly_price: Money
    state: InstanceState
    version: int
    reason_code: str | None
    reason: str | None
    datacenter: str | None
    host: str | None
    addresses: list[str]
    lease_ends_at: datetime | None
    hold: InstanceHold | None = Field(
        default=None, description="the budget hold while the instance is admitted and running"
    )
    created_at: datetime
    updated_at: datetime


class Quota(Contract):
    """Upper bounds for one project's live instances (None: the platform default)."""

    max_instances: int | None = Field(default=None, ge=0, le=100_000)
    max_vcpus: int | None = Field(default=None, ge=0, le=1_000_000)
    max_memory_mib: int | None = Field(default=None, ge=0, le=1024 * 1024 * 1024)
    max_gpus: int | None = Field(default=None, ge=0, le=100_000)


class ProjectRef(Contract):
    """Names one project."""

    project_id: UUID


class SetQuota(Quota):
    """An admin sets a project's quota."""

    project_id: UUID


class SetPolicy(Contract):
    """A project's PI sets when requests need approval and the default lease."""

    project_id: UUID
    requires_approval_above: MoneyLimit | None = None
    approval_for_gpus: bool = False
    default_lease_hours: int | None = Field(default=None, gt=0, le=24 * 366)


class ProjectPolicyPublic(Contract):
    """A project's admission rules and what it uses of them now."""

    project_id: UUID
    name: str
    quota: Quota
    effective_quota: Quota
    used: Quota
    requires_approval_above: Money | None
    approval_for_gpus: bool
    default_lease_hours: int | None


class Utilisation(Contract):
    """Capacity and claims, per datacenter and per host."""

    datacenter: str
    hosts: int
    active_hosts: int
    vcpus: int
    vcpus_schedulable: int
    vcpus_claimed: int
    memory_mib: int
    memory_mib_schedulable: int
    memory_mib_claimed: int
    disk_gib: int
    disk_gib_claimed: int
    gpus: dict[str, int]
    gpus_claimed: dict[str, int]
    instances_by_state: dict[str, int]
    workers: list[WorkerPublic] = Field(
        default_factory=list, description="the datacenter's provisioner workers"
    )


class UtilisationQuery(Contract):
    """Which datacenter (all when None); per host when asked."""

    datacenter: RoutingToken | None = None
    per_host: bool = False


class RepairReport(Contract):
    """What a claim repair found and fixed."""

    orphan_claims_released: int
    missing_claims_restored: int
    hosts_recounted: int
