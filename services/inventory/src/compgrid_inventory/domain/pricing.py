"""Prices: what one hour of an instance type costs under a tier's rates.

Rates are per resource-hour (vCPU, GiB of memory, GPU by model) and per GiB-month of storage;
a month is 730 hours (365 * 24 / 12) when storage is shown per hour. Money is Decimal, kept to
six places here; billing rounds invoice lines to the currency's minor unit.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from compgrid_events.inventory_api import Rates
from compgrid_runtime.errors import Invalid

HOURS_PER_MONTH = Decimal(730)
MIB_PER_GIB = Decimal(1024)
PLACES = Decimal("0.000001")


def hourly_price(
    rates: Rates, *, vcpus: int, memory_mib: int, disk_gib: int, gpus: Mapping[str, int]
) -> Decimal:
    """Return the price of one hour of this size; refuse GPUs the tier has no rate for."""
    missing = sorted(set(gpus) - set(rates.gpu_hour))
    if missing:
        raise Invalid(
            f"the price tier has no hourly rate for GPU model {', '.join(missing)}",
            code="gpu_rate_missing",
            field="gpus",
        )
    price = (
        vcpus * rates.vcpu_hour
        + Decimal(memory_mib) / MIB_PER_GIB * rates.memory_gib_hour
        + disk_gib * rates.storage_gib_month / HOURS_PER_MONTH
        + sum((count * rates.gpu_hour[model] for model, count in gpus.items()), Decimal(0))
    )
    return price.quantize(PLACES)
