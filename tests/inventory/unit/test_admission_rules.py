"""Admission rules: quota, budget state and money left, projected cost, approval policy."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from compgrid_events.base import Money
from compgrid_events.inventory import projected_cost
from compgrid_events.inventory_api import Rates
from compgrid_inventory.domain.admission import (
    Budget,
    Limits,
    Policy,
    Refused,
    Size,
    approval_needed,
    check_budget,
    check_quota,
)
from compgrid_inventory.domain.pricing import hourly_price
from compgrid_runtime.errors import Invalid

TODAY = date(2026, 6, 1)


def budget(**overrides: object) -> Budget:
    values: dict[str, object] = {
        "code": "G-1",
        "currency": "EUR",
        "valid_from": date(2026, 1, 1),
        "valid_to": date(2026, 12, 31),
        "status": "active",
        "billing_state": None,
        "available": None,
    }
    values.update(overrides)
    return Budget(**values)  # type: ignore[arg-type]


def eur(amount: str) -> Money:
    return Money(amount=Decimal(amount), currency="EUR")


def test_quota_counts_what_the_request_adds() -> None:
    limits = Limits(instances=2, vcpus=8, memory_mib=None, gpus=0)
    check_quota(Size(1, 4, 4096, 0), limits, Size(1, 4, 1024, 0))
    with pytest.raises(Refused) as refused:
        check_quota(Size(2, 4, 0, 0), limits, Size(1, 1, 1, 0))
    assert refused.value.code == "quota_exceeded"
    assert "3 instances" in refused.value.message
    assert "quota is 2" in refused.value.message
    with pytest.raises(Refused, match="vCPU"):
        check_quota(Size(1, 6, 0, 0), limits, Size(1, 4, 0, 0))
    with pytest.raises(Refused, match="GPUs"):
        check_quota(Size(), limits, Size(1, 1, 1, 1))


def test_a_project_over_a_lowered_quota_still_gets_what_it_does_not_add_to() -> None:
    # Lowering the quota below use blocks more of that resource, not other requests.
    check_quota(Size(1, 1, 1, 3), Limits(gpus=1), Size(1, 1, 1, 0))


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"status": "suspended"}, "budget_blocked"),
        ({"valid_to": date(2026, 5, 31)}, "budget_expired"),
        ({"valid_from": date(2026, 6, 2)}, "budget_not_yet_valid"),
        ({"billing_state": "exhausted"}, "budget_exhausted"),
        ({"billing_state": "blocked"}, "budget_blocked"),
        ({"billing_state": "expired"}, "budget_expired"),
        ({"currency": "USD"}, "currency_mismatch"),
        ({"available": Decimal("9.99")}, "budget_insufficient"),
        ({"available": Decimal(15), "unconfirmed_holds": Decimal(6)}, "budget_insufficient"),
    ],
)
def test_budget_refusals_name_the_reason(overrides: dict[str, object], code: str) -> None:
    with pytest.raises(Refused) as refused:
        check_budget(budget(**overrides), TODAY, eur("10"))
    assert refused.value.code == code


def test_budget_without_a_billing_report_has_no_limit() -> None:
    check_budget(budget(), TODAY, eur("1000000"))
    check_budget(budget(available=Decimal(16), unconfirmed_holds=Decimal(6)), TODAY, eur("10"))


def test_projected_cost_is_the_horizon_or_the_lease() -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    assert projected_cost(Decimal("0.5"), timedelta(hours=24), now, None) == Decimal(12)
    lease = now + timedelta(hours=2)
    assert projected_cost(Decimal("0.5"), timedelta(hours=24), now, lease) == Decimal(1)
    assert projected_cost(Decimal("0.5"), timedelta(hours=24), now, now) == Decimal(0)


def test_approval_policy() -> None:
    assert approval_needed(Policy(), eur("100"), {"a100": 1}) is None
    assert approval_needed(Policy(approval_for_gpus=True), eur("0.1"), {"a100": 1})
    above = Policy(approval_above=eur("1.00"))
    assert approval_needed(above, eur("1.00"), {}) is None
    assert "above 1.00" in (approval_needed(above, eur("1.01"), {}) or "")


def test_hourly_price_from_rates() -> None:
    rates = Rates(
        vcpu_hour=Decimal("0.10"),
        memory_gib_hour=Decimal("0.01"),
        storage_gib_month=Decimal("0.073"),
        gpu_hour={"a100": Decimal(2)},
    )
    price = hourly_price(rates, vcpus=4, memory_mib=8192, disk_gib=100, gpus={"a100": 1})
    assert price == Decimal("0.4") + Decimal("0.08") + Decimal("0.01") + Decimal(2)
    with pytest.raises(Invalid) as missing:
        hourly_price(rates, vcpus=1, memory_mib=1024, disk_gib=0, gpus={"h100": 1})
    assert missing.value.code == "gpu_rate_missing"
