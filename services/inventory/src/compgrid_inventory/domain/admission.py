"""Admission: may this request run, by the project's quota and the budget code's state?

A refusal names its reason with a stable code (``quota_exceeded``, ``budget_expired``,
``budget_not_yet_valid``, ``budget_blocked``, ``budget_exhausted``, ``budget_insufficient``).
The projected cost is the hourly price over the admission horizon (or until the lease ends,
when that is sooner); it must fit in what billing says is left, minus the holds placed here
that billing has not confirmed yet. Until billing reports on a code, no limit is known.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from compgrid_events.base import Money
from compgrid_events.billing import BudgetState
from compgrid_runtime.errors import Conflict

ACTIVE = "active"


class Refused(Conflict):
    """Admission said no; the request is recorded as rejected with this reason."""

    code = "rejected"


@dataclass(frozen=True, slots=True)
class Size:
    """What instances take, or may take, of a quota."""

    instances: int = 0
    vcpus: int = 0
    memory_mib: int = 0
    gpus: int = 0

    def __add__(self, other: Size) -> Size:
        return Size(
            self.instances + other.instances,
            self.vcpus + other.vcpus,
            self.memory_mib + other.memory_mib,
            self.gpus + other.gpus,
        )


@dataclass(frozen=True, slots=True)
class Limits:
    """A project's quota; None means no limit on that resource."""

    instances: int | None = None
    vcpus: int | None = None
    memory_mib: int | None = None
    gpus: int | None = None


def check_quota(used: Size, limits: Limits, wanted: Size) -> None:
    """Refuse when the request would take the project past any limit of its quota."""
    after = used + wanted
    for resource, unit in _UNITS.items():
        limit = getattr(limits, resource)
        if limit is not None and getattr(wanted, resource) and getattr(after, resource) > limit:
            raise Refused(
                f"quota exceeded: the project would have {getattr(after, resource)} {unit},"
                f" its quota is {limit}",
                code="quota_exceeded",
                field=resource,
            )


_UNITS = {"instances": "instances", "vcpus": "vCPU", "memory_mib": "MiB of memory", "gpus": "GPUs"}


@dataclass(frozen=True, slots=True)
class Budget:
    """What the inventory knows about one budget code."""

    code: str
    currency: str
    valid_from: date
    valid_to: date
    status: str
    billing_state: str | None
    available: Decimal | None
    unconfirmed_holds: Decimal = Decimal(0)


def check_budget(budget: Budget, today: date, cost: Money) -> None:
    """Refuse when the code cannot pay for the projected cost."""
    if budget.status != ACTIVE:
        raise Refused(f"budget code {budget.code} is {budget.status}", code="budget_blocked")
    if today < budget.valid_from or budget.billing_state == BudgetState.NOT_YET_VALID:
        raise Refused(
            f"budget code {budget.code} is valid from {budget.valid_from}",
            code="budget_not_yet_valid",
        )
    if today > budget.valid_to or budget.billing_state == BudgetState.EXPIRED:
        raise Refused(
            f"budget code {budget.code} expired on {budget.valid_to}", code="budget_expired"
        )
    if budget.billing_state == BudgetState.BLOCKED:
        raise Refused(f"budget code {budget.code} is blocked by billing", code="budget_blocked")
    if budget.billing_state == BudgetState.EXHAUSTED:
        raise Refused(f"budget code {budget.code} is exhausted", code="budget_exhausted")
    if cost.currency != budget.currency:
        raise Refused(
            f"the instance is priced in {cost.currency}, budget code {budget.code} pays in"
            f" {budget.currency}",
            code="currency_mismatch",
        )
    if budget.available is None:
        return
    left = budget.available - budget.unconfirmed_holds
    if cost.amount > left:
        raise Refused(
            f"budget code {budget.code} has {max(left, Decimal(0)):.2f} {budget.currency} left"
            f" after holds; this request needs {cost.amount:.2f} over the admission horizon",
            code="budget_insufficient",
        )


@dataclass(frozen=True, slots=True)
class Policy:
    """When a project's requests wait for its PI."""

    approval_above: Money | None = None
    approval_for_gpus: bool = False


def approval_needed(policy: Policy, hourly: Money, gpus: Mapping[str, int]) -> str | None:
    """Return why the request needs the PI's approval, or None when it does not."""
    if policy.approval_for_gpus and gpus:
        return "the instance has GPUs"
    limit = policy.approval_above
    if limit is not None and (hourly.currency != limit.currency or hourly.amount > limit.amount):
        return f"it costs {hourly.amount:.2f} {hourly.currency}/h, above {limit.amount:.2f}"
    return None
