"""Billing's pure rules: rounding to the minor unit, budget state, forecast, thresholds,
quantities from the exact ledger, and who gets a mail."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest

from compgrid_billing.domain.budgets import BudgetView, crossed, runs_out_on, state_of
from compgrid_billing.domain.invoice import Resource, addresses, quantity_of
from compgrid_billing.domain.money import AMOUNT_SCALE, round_money, unscale
from compgrid_events.billing import BudgetState

TODAY = date(2026, 11, 29)


def view(**changes: object) -> BudgetView:
    values: dict[str, object] = {
        "funding": Decimal(100),
        "charged": Decimal(0),
        "held": Decimal(0),
        "valid_from": date(2026, 1, 1),
        "valid_to": date(2026, 12, 31),
        "status": "active",
    }
    values.update(changes)
    return BudgetView(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        (Decimal("1.005"), "EUR", Decimal("1.01")),  # half-up, not half-even
        (Decimal("1.004999"), "EUR", Decimal("1.00")),
        (Decimal("-1.005"), "EUR", Decimal("-1.01")),
        (Decimal("1234.5"), "JPY", Decimal("1235")),
        (Decimal("0.0005"), "KWD", Decimal("0.001")),
    ],
)
def test_amounts_round_half_up_to_the_currency_minor_unit(
    amount: Decimal, currency: str, expected: Decimal
) -> None:
    assert round_money(amount, currency) == expected
    assert str(round_money(amount, currency)) == str(expected)


def test_ledger_amounts_are_exact_until_a_sum_is_divided() -> None:
    # 7 seconds of a vCPU at 0.0433/hour, stored as seconds x rate x 730: no division
    scaled = Decimal(7) * Decimal("0.0433") * 730
    assert unscale(scaled * 3600 / 7) == Decimal("0.0433")
    assert AMOUNT_SCALE == 730 * 3600
    assert quantity_of(Resource.VCPU, Decimal(5400)) == Decimal("1.500000")
    assert quantity_of(Resource.STORAGE, Decimal(AMOUNT_SCALE * 20)) == Decimal("20.000000")


def test_state_follows_status_dates_and_spending() -> None:
    assert state_of(view(), TODAY) is BudgetState.OPEN
    assert state_of(view(status="suspended"), TODAY) is BudgetState.BLOCKED
    assert state_of(view(valid_from=TODAY + timedelta(days=1)), TODAY) is (
        BudgetState.NOT_YET_VALID
    )
    assert state_of(view(valid_to=TODAY - timedelta(days=1)), TODAY) is BudgetState.EXPIRED
    assert state_of(view(charged=Decimal(100)), TODAY) is BudgetState.EXHAUSTED
    # holds limit what admission may spend, they do not exhaust a code
    assert state_of(view(held=Decimal(150)), TODAY) is BudgetState.OPEN
    assert view(charged=Decimal(30), held=Decimal(20)).available == Decimal(50)


def test_forecast_is_the_day_the_funding_runs_out_at_the_recent_burn_rate() -> None:
    assert runs_out_on(view(charged=Decimal(40)), Decimal(6), TODAY) == TODAY + timedelta(days=10)
    assert runs_out_on(view(), Decimal(0), TODAY) is None
    assert runs_out_on(view(charged=Decimal(120)), Decimal(1), TODAY) == TODAY
    assert runs_out_on(view(), Decimal("0.0000001"), TODAY) is None  # centuries away


def test_thresholds_reached_are_listed_once_lowest_first() -> None:
    thresholds = [Decimal(80), Decimal(50), Decimal(100), Decimal(50)]
    assert crossed(view(charged=Decimal("79.99")), thresholds) == [Decimal(50)]
    assert crossed(view(charged=Decimal(80)), thresholds) == [Decimal(50), Decimal(80)]
    assert crossed(view(funding=Decimal(0), charged=Decimal(1)), thresholds) == [
        Decimal(50),
        Decimal(80),
        Decimal(100),
    ]
    assert crossed(view(funding=Decimal(0)), thresholds) == []


def test_mail_goes_to_each_address_once_in_order() -> None:
    assert addresses("pi@uni.example", None, "", "PI@uni.example", "grants@uni.example") == [
        "pi@uni.example",
        "grants@uni.example",
    ]
