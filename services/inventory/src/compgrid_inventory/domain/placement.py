"""Placement: which host an instance goes to — filters first, then weighers.

Filters drop hosts that cannot take the instance: not ``active``, another datacenter, missing
labels, a datacenter no live provisioner worker serves (nobody would create the instance
there), not enough vCPU or memory (after the host's overcommit ratio), disk or GPUs of the
model asked for. Weighers order what is left: hosts with GPUs come last (so work without GPUs
does not leave GPUs unreachable behind CPU and memory it took), then ``pack`` takes the host
with the fewest free vCPUs (fewer hosts busy, whole hosts free for big requests) and
``spread`` the one with the most (less noise between neighbours); a datacenter chooses one.
Pure functions: the claim itself is an atomic update in Postgres (``adapters/claims.py``, which
orders hosts the same way in SQL), so a decision here is only a proposal.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from uuid import UUID


class Strategy(StrEnum):
    """How a datacenter weighs the hosts that fit."""

    PACK = "pack"
    SPREAD = "spread"


@dataclass(frozen=True, slots=True)
class Demand:
    """What one instance needs."""

    vcpus: int
    memory_mib: int
    disk_gib: int
    gpus: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.vcpus <= 0 or self.memory_mib <= 0 or self.disk_gib < 0:
            raise ValueError("an instance needs at least 1 vCPU and 1 MiB of memory")
        if any(count <= 0 for count in self.gpus.values()):
            raise ValueError("GPU counts must be positive")


@dataclass(frozen=True, slots=True)
class HostView:
    """A host as placement sees it: capacity, overcommit, what is claimed already."""

    id: UUID
    datacenter: str
    name: str
    state: str
    vcpus: int
    memory_mib: int
    disk_gib: int
    cpu_overcommit: Decimal = Decimal("4.0")
    memory_overcommit: Decimal = Decimal("1.0")
    gpus: Mapping[str, int] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    claimed_vcpus: int = 0
    claimed_memory_mib: int = 0
    claimed_disk_gib: int = 0
    claimed_gpus: Mapping[str, int] = field(default_factory=dict)
    served: bool = True
    """A live provisioner worker serves the host's datacenter."""

    @property
    def vcpu_limit(self) -> int:
        """vCPUs that may be claimed in total (capacity times overcommit)."""
        return math.floor(self.vcpus * self.cpu_overcommit)

    @property
    def memory_limit(self) -> int:
        """Memory in MiB that may be claimed in total."""
        return math.floor(self.memory_mib * self.memory_overcommit)

    def free_gpus(self, model: str) -> int:
        """GPUs of one model not claimed yet."""
        return self.gpus.get(model, 0) - self.claimed_gpus.get(model, 0)

    def fits(self, demand: Demand) -> bool:
        """Return True when the demand fits in what is left."""
        return (
            self.claimed_vcpus + demand.vcpus <= self.vcpu_limit
            and self.claimed_memory_mib + demand.memory_mib <= self.memory_limit
            and self.claimed_disk_gib + demand.disk_gib <= self.disk_gib
            and all(self.free_gpus(m) >= n for m, n in demand.gpus.items())
        )

    def could_ever_fit(self, demand: Demand) -> bool:
        """Return True when the demand fits on this host when it is empty."""
        empty = HostView(
            self.id,
            self.datacenter,
            self.name,
            "active",
            self.vcpus,
            self.memory_mib,
            self.disk_gib,
            self.cpu_overcommit,
            self.memory_overcommit,
            self.gpus,
        )
        return empty.fits(demand)

    @property
    def free_vcpus(self) -> int:
        """vCPUs that may still be claimed."""
        return self.vcpu_limit - self.claimed_vcpus


@dataclass(frozen=True, slots=True)
class Constraints:
    """Where the instance may go."""

    datacenter: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


ANYWHERE = Constraints()


class NoPlacement(Exception):
    """No host can take the instance; ``reason`` says why, for the person who asked."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


def unserved_reason(datacenter: str) -> str:
    """What a person reads when no provisioner worker serves a datacenter."""
    return f"no provisioner is running for datacenter {datacenter}"


def _passes(host: HostView, constraints: Constraints) -> bool:
    return (constraints.datacenter is None or host.datacenter == constraints.datacenter) and all(
        host.labels.get(k) == v for k, v in constraints.labels.items()
    )


def rank(
    hosts: Iterable[HostView],
    demand: Demand,
    constraints: Constraints = ANYWHERE,
    strategy: Strategy = Strategy.PACK,
) -> list[HostView]:
    """Return the hosts that can take the demand now, best first; raise NoPlacement if none.

    The reason distinguishes "no host could ever run this" (the request is too big or asks for
    something the cluster does not have) from "not now" (full, or hosts in maintenance/down).
    """
    eligible = [h for h in hosts if _passes(h, constraints)]
    if not eligible:
        where = f"datacenter {constraints.datacenter}" if constraints.datacenter else "any host"
        labels = ", ".join(f"{k}={v}" for k, v in sorted(constraints.labels.items()))
        raise NoPlacement(
            "no_matching_host", f"no host matches {where}" + (f" with {labels}" if labels else "")
        )
    served = [h for h in eligible if h.served]
    if not served:
        names = ", ".join(sorted({h.datacenter for h in eligible}))
        raise NoPlacement("no_provisioner", unserved_reason(names))
    eligible = served
    if not any(h.could_ever_fit(demand) for h in eligible):
        raise NoPlacement("too_large", "no host is large enough for this instance")
    fitting = [h for h in eligible if h.state == "active" and h.fits(demand)]
    if not fitting:
        raise NoPlacement("no_capacity", "no active host has enough free capacity right now")
    sign = 1 if strategy is Strategy.PACK else -1

    def weight(h: HostView) -> tuple[bool, int, str]:
        # GPU hosts go last (for GPU work every candidate has GPUs), then the fewest free vCPUs
        # (pack) or the most (spread); the SQL of adapters/claims.py orders the same way.
        return (bool(h.gpus), sign * h.free_vcpus, h.name)

    return sorted(fitting, key=weight)
