"""Every JetStream stream of CompGrid, declared once.

A stream is owned by the service that publishes into it; that service (or the deploy job)
creates and updates it. Everyone else only references it by name. Replicas come from settings
at creation time, so the same declaration serves one laptop and a three-node cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Retention(StrEnum):
    """How long a stream keeps messages."""

    LIMITS = "limits"
    INTEREST = "interest"
    WORKQUEUE = "workqueue"


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """Declaration of one JetStream stream."""

    name: str
    subjects: tuple[str, ...]
    owner: str
    description: str
    retention: Retention = Retention.LIMITS
    duplicate_window_s: float = 120.0
    max_age_s: float | None = None
    file_storage: bool = True


DAY = 86_400.0

AUTH = StreamSpec(
    "AUTH", ("auth.>",), "auth", "Identity and tenancy events: users, projects, budget codes."
)
INVENTORY = StreamSpec(
    "INVENTORY",
    ("inventory.>",),
    "inventory",
    "Inventory events: instance lifecycle, hosts, price tiers, instance types.",
)
PROVISION = StreamSpec(
    "PROVISION",
    ("provision.>",),
    "inventory",
    "Commands to the provisioner of one datacenter: provision.<datacenter>.instance.<command>.",
    max_age_s=30 * DAY,
)
PROVISIONER = StreamSpec(
    "PROVISIONER",
    ("provisioner.>",),
    "provisioner",
    "Provisioner results: instances started, stopped, failed, deleted; hosts unreachable.",
)
USAGE = StreamSpec(
    "USAGE",
    ("usage.>",),
    "provisioner",
    "Usage ticks per datacenter and host; kept long enough to rebuild metering by replay.",
    max_age_s=400 * DAY,
)
HEARTBEAT = StreamSpec(
    "HEARTBEAT",
    ("heartbeat.>",),
    "provisioner",
    "Provisioner workers announcing themselves: heartbeat.provisioner.<datacenter>.",
    duplicate_window_s=10.0,
    max_age_s=3600.0,
    file_storage=False,
)
METERING = StreamSpec(
    "METERING", ("metering.>",), "metering", "Closed hourly usage rollups and idle instances."
)
BILLING = StreamSpec(
    "BILLING",
    ("billing.>",),
    "billing",
    "Budget status, thresholds and exhaustion; invoices issued and delivered.",
)
DEADLETTER = StreamSpec(
    "DEADLETTER",
    ("deadletter.>",),
    "platform",
    "Messages a consumer gave up on, with the reason: deadletter.<service>.<consumer>.",
    max_age_s=90 * DAY,
)

ALL_STREAMS: tuple[StreamSpec, ...] = (
    AUTH,
    INVENTORY,
    PROVISION,
    PROVISIONER,
    USAGE,
    HEARTBEAT,
    METERING,
    BILLING,
    DEADLETTER,
)


def streams_owned_by(owner: str) -> tuple[StreamSpec, ...]:
    """Return the streams a service (or ``platform``) creates and keeps up to date."""
    return tuple(spec for spec in ALL_STREAMS if spec.owner == owner)
