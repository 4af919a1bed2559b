"""Request and reply bodies of the auth service's request/reply operations (``rpc.auth.*``).

The gateway exposes the same models over HTTP, so the contract lives here, beside the events.
Every string has a length cap so oversized input is refused before it reaches a hash or a row.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Generic, TypeVar
from uuid import UUID

from pydantic import Field, StringConstraints

from compgrid_events.auth import BudgetCodeStatus, HardLimitBehaviour, ProjectRole, Role
from compgrid_events.base import Contract, Currency, Money, MoneyLimit, UtcDatetime

Email = Annotated[str, Field(min_length=3, max_length=254)]
Password = Annotated[str, Field(min_length=1, max_length=1024)]
NewPassword = Annotated[
    str,
    Field(
        min_length=12,
        max_length=128,
        description="12 to 128 characters, at least 5 different ones, not a common password",
    ),
]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Secret = Annotated[str, Field(min_length=1, max_length=512)]
Limit = Annotated[int, Field(ge=1, le=500)]
T = TypeVar("T")


class Login(Contract):
    """Email and password."""

    email: Email
    password: Password


class Refresh(Contract):
    """A refresh token to rotate or revoke."""

    refresh_token: Secret


class ExchangeApiToken(Contract):
    """An API token to trade for a short-lived access token."""

    api_token: Secret


class TokenPair(Contract):
    """What a successful login or refresh returns."""

    access_token: str
    access_expires_at: datetime
    refresh_token: str | None = None
    token_type: str = "Bearer"


class CreateUser(Contract):
    """An admin creates an account."""

    email: Email
    display_name: Name
    password: NewPassword
    roles: tuple[Role, ...] = (Role.MEMBER,)


class Register(Contract):
    """Self-registration (when an admin has switched it on)."""

    email: Email
    display_name: Name
    password: NewPassword


class UserPublic(Contract):
    """An account as others may see it."""

    id: UUID
    email: str
    display_name: str
    roles: tuple[Role, ...]
    status: str
    created_at: datetime


class Me(UserPublic):
    """The caller's own account with project memberships."""

    projects: dict[UUID, ProjectRole] = Field(default_factory=dict)


class UserRef(Contract):
    """Names one account."""

    user_id: UUID
    reason: str = Field(default="", max_length=500)


class ListUsers(Contract):
    """Filter and page through accounts."""

    query: str | None = Field(default=None, max_length=200)
    status: str | None = Field(default=None, max_length=16)
    after: str | None = Field(default=None, max_length=254, description="cursor: last email seen")
    limit: Limit = 50


class Page(Contract, Generic[T]):
    """One page of a list, with the cursor of the next page (None at the end)."""

    items: list[T]
    next_cursor: str | None = None


class ChangePassword(Contract):
    """The caller changes their own password."""

    current_password: Password
    new_password: NewPassword


class RequestPasswordReset(Contract):
    """Ask for a reset link by email (the answer never says whether the account exists)."""

    email: Email


class ResetPassword(Contract):
    """Set a new password with the emailed token."""

    token: Secret
    new_password: NewPassword


class AcceptInvitation(Contract):
    """Finish an invited account."""

    token: Secret
    display_name: Name
    password: NewPassword


class PlatformSettings(Contract):
    """Switches an admin controls."""

    self_registration: bool


class CreateProject(Contract):
    """A PI (or an admin naming the PI) creates a project."""

    name: Name
    pi_user_id: UUID | None = None
    requires_approval_above: MoneyLimit | None = None
    default_lease_hours: int | None = Field(default=None, gt=0, le=24 * 366)


class ProjectPublic(Contract):
    """A project with its members."""

    id: UUID
    name: str
    pi_user_id: UUID
    requires_approval_above: Money | None = None
    default_lease_hours: int | None = None
    members: dict[UUID, ProjectRole] = Field(default_factory=dict)
    created_at: datetime


class ProjectRef(Contract):
    """Names one project."""

    project_id: UUID


class ListProjects(Contract):
    """Page through the projects the caller may see."""

    after: str | None = Field(default=None, max_length=200)
    limit: Limit = 50


class AddMember(Contract):
    """Add an existing account to a project, or change its role there."""

    project_id: UUID
    user_id: UUID
    role: ProjectRole = ProjectRole.MEMBER


class RemoveMember(Contract):
    """Take an account out of a project."""

    project_id: UUID
    user_id: UUID


class Invite(Contract):
    """A PI invites someone by email into a project."""

    project_id: UUID
    email: Email
    role: ProjectRole = ProjectRole.MEMBER


BudgetCodeKey = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._/-]+$"
    ),
    Field(description="the budget code's id or its code (e.g. DEMO-GRANT-1)"),
]
"""A budget code as people type it: its id or its code (codes are unique)."""

IdOrBudgetCode = Annotated[
    UUID | BudgetCodeKey,
    Field(
        union_mode="left_to_right",
        description="the instance's or project's id; a budget code's id or its code",
    ),
]
"""Whose usage or costs a query asks for: an instance or project by id, a budget code by id
or by its code (``of`` says which; see ``only_budget_codes_by_code``)."""


def only_budget_codes_by_code(of: str | None, key: UUID | str) -> UUID | str:
    """Refuse a code for anything but a budget code: instances and projects have only ids."""
    if of is not None and of != "budget_code" and not isinstance(key, UUID):
        raise ValueError("instances and projects are named by their id (a UUID)")
    return key


class CreateBudgetCode(Contract):
    """A grant for a project."""

    project_id: UUID
    code: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._/-]+$")]
    name: Name
    funding_amount: Decimal = Field(gt=0, max_digits=18, decimal_places=4)
    currency: Currency
    valid_from: date
    valid_to: date
    soft_thresholds_percent: tuple[Decimal, ...] = (Decimal(50), Decimal(80), Decimal(100))
    hard_limit_behaviour: HardLimitBehaviour = HardLimitBehaviour.STOP_INSTANCES


class UpdateBudgetCode(Contract):
    """Change a grant; ``expected_version`` guards against lost updates."""

    budget_code_id: BudgetCodeKey
    expected_version: int = Field(ge=1)
    name: Name | None = None
    funding_amount: Decimal | None = Field(default=None, gt=0, max_digits=18, decimal_places=4)
    valid_from: date | None = None
    valid_to: date | None = None
    soft_thresholds_percent: tuple[Decimal, ...] | None = None
    hard_limit_behaviour: HardLimitBehaviour | None = None
    status: BudgetCodeStatus | None = None


class BudgetCodePublic(Contract):
    """A grant."""

    id: UUID
    project_id: UUID
    code: str
    name: str
    funding: Money
    valid_from: date
    valid_to: date
    soft_thresholds_percent: tuple[Decimal, ...]
    hard_limit_behaviour: HardLimitBehaviour
    status: BudgetCodeStatus
    version: int


class BudgetCodeRef(Contract):
    """Names one grant."""

    budget_code_id: BudgetCodeKey


class ListBudgetCodes(Contract):
    """The grants of one project, or of every project the caller may see."""

    project_id: UUID | None = None


class CreateApiToken(Contract):
    """A named token for scripts; the secret is shown once."""

    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
    expires_at: UtcDatetime | None = None


class ApiTokenPublic(Contract):
    """An API token without its secret."""

    id: UUID
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class ApiTokenCreated(ApiTokenPublic):
    """The new token, with the secret shown this once."""

    token: str


class ApiTokenRef(Contract):
    """Names one API token."""

    token_id: UUID


class ListAudit(Contract):
    """Filter the audit log (admins)."""

    actor_id: UUID | None = None
    action: str | None = Field(default=None, max_length=64)
    target_id: str | None = Field(default=None, max_length=64)
    since: datetime | None = None
    until: datetime | None = None
    before_id: int | None = Field(
        default=None, ge=1, le=2**63 - 1, description="cursor: last id seen (a bigint)"
    )
    limit: Limit = 100


class AuditEntryPublic(Contract):
    """One recorded action."""

    id: int
    at: datetime
    actor_id: UUID | None
    action: str
    target_type: str
    target_id: str | None
    client_address: str | None
    request_id: str | None
    details: dict[str, object]
