"""Events published by the auth service: users, projects, memberships, budget codes."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import Annotated
from uuid import UUID

from pydantic import Field

from compgrid_events.base import Event, Money
from compgrid_events.streams import AUTH


class Role(StrEnum):
    """Platform-wide roles."""

    ADMIN = "admin"
    PI = "pi"
    MEMBER = "member"
    FINANCE = "finance"


class ProjectRole(StrEnum):
    """A user's role inside one project."""

    PI = "pi"
    MEMBER = "member"


class HardLimitBehaviour(StrEnum):
    """What happens when a budget code reaches its hard limit."""

    STOP_INSTANCES = "stop_instances"
    BLOCK_NEW = "block_new"


class BudgetCodeStatus(StrEnum):
    """Administrative status of a budget code."""

    ACTIVE = "active"
    SUSPENDED = "suspended"
    CLOSED = "closed"


Percent = Annotated[Decimal, Field(gt=0, le=1000)]


class UserRegistered(Event):
    """A user account exists (created by an admin, self-registered or invited)."""

    subject_template = "auth.user.registered"
    stream = AUTH
    user_id: UUID
    email: str
    display_name: str
    roles: tuple[Role, ...]

    @property
    def aggregate_id(self) -> str:
        return str(self.user_id)


class UserDisabled(Event):
    """A user account was disabled; its tokens must stop working."""

    subject_template = "auth.user.disabled"
    stream = AUTH
    user_id: UUID
    reason: str = ""

    @property
    def aggregate_id(self) -> str:
        return str(self.user_id)


class ProjectCreated(Event):
    """A project (lab or research group) was created."""

    subject_template = "auth.project.created"
    stream = AUTH
    project_id: UUID
    name: str
    pi_user_id: UUID
    requires_approval_above: Money | None = None
    default_lease_hours: int | None = Field(default=None, gt=0)

    @property
    def aggregate_id(self) -> str:
        return str(self.project_id)


class MembershipChanged(Event):
    """A user joined, left, or changed role in a project (``role`` is None when removed)."""

    subject_template = "auth.project.membership_changed"
    stream = AUTH
    project_id: UUID
    user_id: UUID
    role: ProjectRole | None

    @property
    def aggregate_id(self) -> str:
        return str(self.project_id)


class _BudgetCodeState(Event):
    budget_code_id: UUID
    project_id: UUID
    code: str
    name: str
    funding: Money
    valid_from: date
    valid_to: date
    soft_thresholds_percent: tuple[Percent, ...] = (Decimal(50), Decimal(80), Decimal(100))
    hard_limit_behaviour: HardLimitBehaviour = HardLimitBehaviour.STOP_INSTANCES
    status: BudgetCodeStatus = BudgetCodeStatus.ACTIVE
    version: int = Field(default=1, ge=1)

    @property
    def aggregate_id(self) -> str:
        return str(self.budget_code_id)


class BudgetCodeCreated(_BudgetCodeState):
    """A grant was registered for a project, with its full state."""

    subject_template = "auth.budget_code.created"
    stream = AUTH


class BudgetCodeUpdated(_BudgetCodeState):
    """A grant changed; carries the full new state and a version that only grows."""

    subject_template = "auth.budget_code.updated"
    stream = AUTH
