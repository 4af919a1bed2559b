"""Request and reply bodies of the billing service's operations (``rpc.billing.*``)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from enum import StrEnum
from uuid import UUID

from pydantic import Field, ValidationInfo, field_validator, model_validator

from compgrid_events.auth_api import BudgetCodeKey, IdOrBudgetCode, only_budget_codes_by_code
from compgrid_events.base import Contract, Money, UtcDatetime
from compgrid_events.billing import BudgetState

INVOICE_ISSUED = "invoice.issued"
BUDGET_THRESHOLD_CROSSED = "budget.threshold_crossed"
BUDGET_EXHAUSTED = "budget.exhausted"
WEBHOOK_EVENT_TYPES = (INVOICE_ISSUED, BUDGET_THRESHOLD_CROSSED, BUDGET_EXHAUSTED)


class CostsOf(StrEnum):
    """Whose costs a query asks for."""

    INSTANCE = "instance"
    PROJECT = "project"
    BUDGET_CODE = "budget_code"


class _Window(Contract):
    since: UtcDatetime
    until: UtcDatetime

    @model_validator(mode="after")
    def _window(self) -> _Window:
        if self.until <= self.since:
            raise ValueError("until must be after since")
        if (self.until - self.since).days > 400:
            raise ValueError("at most 400 days at once")
        return self


class CostsQuery(_Window):
    """Charges of one instance, project or budget code for hours in ``[since, until)``, in
    total, per resource and per day (UTC days, for charts)."""

    of: CostsOf
    id: IdOrBudgetCode

    @field_validator("id")
    @classmethod
    def _by_code(cls, key: UUID | str, info: ValidationInfo) -> UUID | str:
        return only_budget_codes_by_code(info.data.get("of"), key)


class ResourceCost(Contract):
    """Quantity and amount of one resource (``model``: the GPU model, else empty)."""

    resource: str
    model: str = ""
    unit: str
    quantity: Decimal
    amount: Decimal


class DayCost(Contract):
    """What one UTC day cost."""

    day: date
    amount: Decimal


class CostsReport(Contract):
    """Unrounded sums of the ledger (invoices round per line)."""

    of: CostsOf
    id: UUID
    project_id: UUID
    since: UtcDatetime
    until: UtcDatetime
    currency: str | None
    total: Decimal
    resources: list[ResourceCost]
    days: list[DayCost]


class InstanceCostsQuery(Contract):
    """What one instance has cost so far."""

    instance_id: UUID


class InstanceCosts(Contract):
    """What an instance has cost: its charges priced so far (every hour, the same ledger
    ``/costs`` sums), and an estimate for the running time in hours not priced yet (metering
    closes an hour some minutes after it ends) at the instance's hourly price."""

    instance_id: UUID
    project_id: UUID
    currency: str
    hourly_price: Money
    charged: Decimal = Field(description="priced charges, unrounded (six decimals)")
    resources: list[ResourceCost]
    unrated_running_seconds: Decimal = Field(description="running time in hours not priced yet")
    estimated_unrated: Decimal = Field(description="that time at the hourly price")
    estimated_total: Decimal = Field(description="charged plus estimated_unrated")


class BudgetsQuery(Contract):
    """Budget codes of one project, or without one of every project the caller is in (admins
    and finance: every project)."""

    project_id: UUID | None = None


class BudgetRef(Contract):
    """One budget code, by id or code."""

    budget_code_id: BudgetCodeKey


class BudgetPublic(Contract):
    """A budget code's money: funding, charges, holds, what is left and when it runs out."""

    budget_code_id: UUID
    project_id: UUID
    code: str
    name: str
    state: BudgetState | None
    funding: Money
    charged: Money
    held: Money
    available: Money
    spent_percent: Decimal
    burn_per_day: Money
    runs_out_on: date | None
    valid_from: date
    valid_to: date
    thresholds_percent: list[Decimal]
    thresholds_crossed: list[Decimal]


class BudgetList(Contract):
    """Budget codes, by project and code."""

    budgets: list[BudgetPublic]


class InvoicesQuery(Contract):
    """Invoices of one project (or every project, for admins and finance), newest first."""

    project_id: UUID | None = None
    budget_code_id: BudgetCodeKey | None = None
    after: str | None = Field(
        default=None, max_length=20, description="cursor: the previous page's next_cursor"
    )
    limit: int = Field(default=100, ge=1, le=1000)


class InvoiceRef(Contract):
    """One invoice."""

    invoice_id: UUID


class InvoiceLinePublic(Contract):
    """One line: an instance's use of one resource in the period, or a correction."""

    position: int
    kind: str
    instance_id: UUID
    instance_name: str
    resource: str
    model: str
    quantity: Decimal
    unit: str
    rate: Decimal | None
    amount: Decimal


class InvoiceSummary(Contract):
    """An invoice without its lines."""

    invoice_id: UUID
    number: str
    project_id: UUID
    project_name: str
    budget_code_id: UUID
    budget_code: str
    period_start: UtcDatetime
    period_end: UtcDatetime
    currency: str
    subtotal: Decimal
    adjustments: Decimal
    total: Decimal
    issued_at: UtcDatetime


class InvoiceDetail(InvoiceSummary):
    """An invoice with its lines."""

    lines: list[InvoiceLinePublic]


class InvoiceList(Contract):
    """Invoices, newest first, and the cursor of the next page (None at the end)."""

    invoices: list[InvoiceSummary]
    next_cursor: str | None = None


class Document(Contract):
    """A rendered file: ``content`` is base64 for PDFs, text for CSVs."""

    filename: str
    media_type: str
    content: str
    encoding: str = Field(pattern=r"^(base64|utf-8)$")


class PeriodQuery(Contract):
    """A billing period ``[period_start, period_end)``."""

    period_start: UtcDatetime
    period_end: UtcDatetime

    @model_validator(mode="after")
    def _ordered(self) -> PeriodQuery:
        if self.period_end <= self.period_start:
            raise ValueError("period_end must be after period_start")
        return self


class StartRun(PeriodQuery):
    """Invoice a closed period (admins)."""


class RunPublic(Contract):
    """A billing run and what it issued."""

    run_id: UUID
    period_start: UtcDatetime
    period_end: UtcDatetime
    state: str
    started_by: str
    invoices: int = Field(description="invoices the run issued")
    started_at: UtcDatetime
    finished_at: UtcDatetime | None


class RunStarted(RunPublic):
    """The run a request started or found, and what this request issued."""

    issued_now: int = Field(description="invoices this request issued (0 when run before)")


class RunList(Contract):
    """Billing runs, newest period first."""

    runs: list[RunPublic]


class DeliveriesQuery(Contract):
    """Deliveries of one invoice, or (admins and finance) every delivery (invoices and budget
    events) in a state."""

    invoice_id: UUID | None = None
    state: str | None = Field(default=None, pattern=r"^(pending|delivered|failed)$")
    limit: int = Field(default=200, ge=1, le=2000)


class AttemptPublic(Contract):
    """One attempt at a delivery."""

    attempt: int
    at: UtcDatetime
    delivered: bool
    status: int | None
    detail: str
    duration_ms: int


class DeliveryPublic(Contract):
    """One message (an invoice, or a budget event by webhook) to one recipient over one
    channel, with every attempt."""

    delivery_id: UUID
    event_type: str = Field(description="what is delivered: one of the webhook event types")
    invoice_id: UUID | None = Field(description="the invoice delivered (none for budget events)")
    invoice_number: str | None
    channel: str
    recipient: str
    message_id: str
    state: str
    attempts: list[AttemptPublic]
    next_attempt_at: UtcDatetime | None
    give_up_at: UtcDatetime
    last_detail: str
    requested_by: str
    created_at: UtcDatetime
    finished_at: UtcDatetime | None


class DeliveryList(Contract):
    """Deliveries, newest first."""

    deliveries: list[DeliveryPublic]


class Resend(Contract):
    """Send an invoice again: to its usual recipients, or only by one channel, or to one
    address or endpoint."""

    invoice_id: UUID
    channel: str | None = Field(default=None, pattern=r"^(email|webhook)$")
    email: str | None = Field(default=None, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    webhook_id: UUID | None = None


class CreateWebhook(Contract):
    """An endpoint for one project's invoices, or (admins) every project's."""

    project_id: UUID | None = None
    url: str = Field(min_length=1, max_length=2000)
    event_types: list[str] = Field(default_factory=lambda: [INVOICE_ISSUED], min_length=1)


class WebhookRef(Contract):
    """One endpoint."""

    webhook_id: UUID


class WebhooksQuery(Contract):
    """Endpoints of one project, or without one those of every project the caller is PI of
    (admins: the global ones and every project's)."""

    project_id: UUID | None = None


class WebhookPublic(Contract):
    """An endpoint; ``secret`` only in the reply that created it."""

    id: UUID
    project_id: UUID | None
    url: str
    event_types: list[str]
    created_at: UtcDatetime
    disabled_at: UtcDatetime | None
    secret: str | None = None


class WebhookList(Contract):
    """Endpoints, oldest first."""

    webhooks: list[WebhookPublic]


class ProjectRef(Contract):
    """One project."""

    project_id: UUID


class SetContacts(Contract):
    """Who besides the PI receives a project's invoices (replaces the list)."""

    project_id: UUID
    emails: list[str] = Field(default_factory=list, max_length=20)

    @model_validator(mode="after")
    def _addresses(self) -> SetContacts:
        for email in self.emails:
            local, at, domain = email.partition("@")
            if not at or not local or "." not in domain or any(c.isspace() for c in email):
                raise ValueError(f"{email!r} is not an email address")
            if len(email) > 320:
                raise ValueError("an email address has at most 320 characters")
        return self


class Contacts(Contract):
    """Where a project's invoices go by email."""

    project_id: UUID
    pi_email: str | None
    emails: list[str]


class ParkedQuery(Contract):
    """Usage waiting to be priced (admins and finance)."""

    limit: int = Field(default=200, ge=1, le=5000)


class ParkedHour(Contract):
    """One instance-hour that could not be priced yet, and why."""

    instance_id: UUID
    hour_start: UtcDatetime
    project_id: UUID
    budget_code_id: UUID
    revision: int
    received_at: UtcDatetime
    reason_code: str
    reason: str


class ParkedList(Contract):
    """Parked usage, oldest first."""

    hours: list[ParkedHour]


class StatsQuery(_Window):
    """Earnings and the biggest spenders over hours in ``[since, until)`` (admins and finance)."""

    top: int = Field(default=10, ge=1, le=100)


class EarningsDay(Contract):
    """What the cluster charged on one UTC day, in one currency."""

    day: date
    currency: str
    amount: Decimal


class TypeStats(Contract):
    """Charged instances of one type, their running hours (metered) and what they were charged."""

    instance_type: str
    currency: str
    instances: int
    running_hours: Decimal = Field(
        description="the ledger keeps no running time: the metered running seconds (newest "
        "rollup) of the charged instance-hours / 3600"
    )
    amount: Decimal


class TopProject(Contract):
    """One of the projects that spent most in a currency."""

    project_id: UUID
    name: str
    currency: str
    instances: int
    amount: Decimal


class TopUser(Contract):
    """One of the people whose instances spent most in a currency."""

    user_id: UUID
    display_name: str
    email: str
    currency: str
    instances: int
    amount: Decimal


class BillingStats(Contract):
    """Unrounded sums of the ledger per currency: per UTC day, per instance type, and the
    ``top`` projects and requesters in each currency, biggest first."""

    since: UtcDatetime
    until: UtcDatetime
    earnings: list[EarningsDay]
    by_instance_type: list[TypeStats]
    top_projects: list[TopProject]
    top_users: list[TopUser]
