"""An issued invoice as documents show it (PDF, CSV, mail): plain values, no database."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from uuid import UUID

from compgrid_billing.domain.money import AMOUNT_SCALE


class Resource(StrEnum):
    """What a line charges for."""

    VCPU = "vcpu"
    MEMORY = "memory"
    STORAGE = "storage"
    GPU = "gpu"


UNITS = {
    Resource.VCPU: "vCPU-hour",
    Resource.MEMORY: "GiB-hour",
    Resource.STORAGE: "GiB-month",
    Resource.GPU: "GPU-hour",
}


QUANTITY = Decimal("0.000001")


def quantity_of(resource: Resource, seconds: Decimal) -> Decimal:
    """A ledger quantity (resource-seconds) in the resource's unit, to six decimals."""
    per_unit = AMOUNT_SCALE if resource is Resource.STORAGE else 3600
    return (Decimal(seconds) / per_unit).quantize(QUANTITY)


def addresses(*found: str | None) -> list[str]:
    """Email addresses in the order given, each once (compared without case), blanks left out."""
    seen: set[str] = set()
    result = []
    for address in found:
        if address and address.lower() not in seen:
            seen.add(address.lower())
            result.append(address)
    return result


class LineKind(StrEnum):
    """A line of the invoiced period, or a correction of an earlier one."""

    USAGE = "usage"
    ADJUSTMENT = "adjustment"


@dataclass(frozen=True)
class InvoiceLine:
    """One instance's use of one resource (``model``: the GPU model, else empty).

    ``amount`` is rounded to the currency's minor unit; ``rate`` is the amount per unit when
    one rate applied to the whole quantity, else None (a price change inside the period).
    """

    position: int
    kind: LineKind
    instance_id: UUID
    instance_name: str
    resource: Resource
    model: str
    quantity: Decimal
    unit: str
    rate: Decimal | None
    amount: Decimal

    @property
    def description(self) -> str:
        """What the line is, for people."""
        what = f"{self.model} GPU" if self.resource is Resource.GPU else self.resource.value
        text = f"{self.instance_name}: {what}"
        return f"{text} (earlier period)" if self.kind is LineKind.ADJUSTMENT else text


@dataclass(frozen=True)
class InvoiceDocument:
    """Everything printed on an invoice. ``subtotal`` sums the usage lines, ``adjustments``
    the adjustment lines; ``total`` = subtotal + adjustments."""

    invoice_id: UUID
    number: str
    issued_at: datetime
    period_start: datetime
    period_end: datetime
    project_id: UUID
    project_name: str
    budget_code_id: UUID
    budget_code: str
    budget_name: str
    currency: str
    subtotal: Decimal
    adjustments: Decimal
    total: Decimal
    lines: tuple[InvoiceLine, ...] = field(default=())
    pi_name: str = ""
    pi_email: str = ""


@dataclass(frozen=True)
class ExportRow:
    """One invoice line in the finance export of a period (every invoice of the period)."""

    invoice_number: str
    issued_at: datetime
    period_start: datetime
    period_end: datetime
    cost_centre: str
    budget_code_id: UUID
    project_id: UUID
    project_name: str
    line: InvoiceLine
    currency: str
