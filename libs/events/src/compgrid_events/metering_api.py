"""Request and reply bodies of the metering service's operations (``rpc.metering.*``)."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated
from uuid import UUID

from pydantic import Field, ValidationInfo, field_validator, model_validator

from compgrid_events.auth_api import IdOrBudgetCode, only_budget_codes_by_code
from compgrid_events.base import Contract, UtcDatetime

NonNegative = Annotated[Decimal, Field(ge=0)]


class UsageOf(StrEnum):
    """Whose usage a query asks for."""

    INSTANCE = "instance"
    PROJECT = "project"
    BUDGET_CODE = "budget_code"


class UsageQuery(Contract):
    """Usage of one instance, project or budget code, hour by hour, over ``[since, until)``;
    by default the last 24 hours up to now. At most 93 days at once."""

    of: UsageOf
    id: IdOrBudgetCode
    since: UtcDatetime | None = None
    until: UtcDatetime | None = None

    @field_validator("id")
    @classmethod
    def _by_code(cls, key: UUID | str, info: ValidationInfo) -> UUID | str:
        return only_budget_codes_by_code(info.data.get("of"), key)

    @model_validator(mode="after")
    def _window(self) -> UsageQuery:
        if self.since is not None and self.until is not None:
            if self.until <= self.since:
                raise ValueError("until must be after since")
            if (self.until - self.since).days > 93:
                raise ValueError("at most 93 days at once")
        return self


class Amounts(Contract):
    """Usage in resource-seconds (memory in GiB-seconds), exact decimals."""

    running_seconds: NonNegative = Decimal(0)
    vcpu_seconds: NonNegative = Decimal(0)
    memory_gib_seconds: NonNegative = Decimal(0)
    gpu_seconds: dict[str, NonNegative] = Field(default_factory=dict)
    cpu_time_seconds: NonNegative = Decimal(0)


class HourUsage(Amounts):
    """One hour of usage; ``closed`` hours are rolled up (they change only by correction)."""

    hour_start: UtcDatetime
    closed: bool


class UsageReport(Contract):
    """The hours with usage in the window, oldest first, and their sum; ``complete`` is false
    while metering rebuilds counters that Redis lost (hours and sum may then be too low)."""

    of: UsageOf
    id: UUID
    project_id: UUID | None
    since: UtcDatetime
    until: UtcDatetime
    hours: list[HourUsage]
    total: Amounts
    complete: bool = True
