"""Events published by billing: budget status, thresholds, exhaustion, invoices."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from enum import StrEnum
from uuid import UUID

from pydantic import Field

from compgrid_events.auth import HardLimitBehaviour
from compgrid_events.base import Event, Money, UtcDatetime
from compgrid_events.streams import BILLING


class BudgetState(StrEnum):
    """What admission may do with a budget code."""

    OPEN = "open"
    EXHAUSTED = "exhausted"
    BLOCKED = "blocked"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"


class _BudgetEvent(Event):
    budget_code_id: UUID
    project_id: UUID

    @property
    def aggregate_id(self) -> str:
        return str(self.budget_code_id)


class BudgetStatusChanged(_BudgetEvent):
    """What inventory's admission needs to know about one budget code, with a growing version."""

    subject_template = "billing.budget.status_changed"
    stream = BILLING
    state: BudgetState
    funding: Money
    available: Money = Field(description="funding minus charges minus holds")
    version: int = Field(ge=1)
    runs_out_on: date | None = None
    held_instance_ids: tuple[UUID, ...] = Field(
        default=(), description="instances whose admission holds ``available`` already counts"
    )


class BudgetThresholdCrossed(_BudgetEvent):
    """Spending crossed a soft threshold (once per threshold per period)."""

    subject_template = "billing.budget.threshold_crossed"
    stream = BILLING
    threshold_percent: Decimal
    spent: Money
    funding: Money
    runs_out_on: date | None = None


class BudgetExhausted(_BudgetEvent):
    """The hard limit was reached; inventory stops instances or blocks new ones."""

    subject_template = "billing.budget.exhausted"
    stream = BILLING
    behaviour: HardLimitBehaviour
    spent: Money
    funding: Money


class InvoiceIssued(Event):
    """An invoice was issued for a project, budget code and period."""

    subject_template = "billing.invoice.issued"
    stream = BILLING
    invoice_id: UUID
    number: str
    project_id: UUID
    budget_code_id: UUID
    period_start: UtcDatetime
    period_end: UtcDatetime
    total: Money

    @property
    def aggregate_id(self) -> str:
        return str(self.invoice_id)


class InvoiceDelivered(Event):
    """An invoice reached a recipient (email or webhook) or finally failed to."""

    subject_template = "billing.invoice.delivered"
    stream = BILLING
    invoice_id: UUID
    channel: str = Field(pattern=r"^(email|webhook)$")
    recipient: str
    succeeded: bool
    attempts: int = Field(ge=1)
    detail: str = ""

    @property
    def aggregate_id(self) -> str:
        return str(self.invoice_id)
