"""The estimate of an instance's hours not priced yet."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from compgrid_billing.domain.estimate import estimate, unpriced_seconds

T0 = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    """``minutes`` after 10:00."""
    return T0 + timedelta(minutes=minutes)


def test_counts_only_the_hours_without_priced_usage() -> None:
    runs = [(at(20), at(130))]  # 10:20 to 12:10
    assert unpriced_seconds(runs, {at(0), at(60)}, now=at(300)) == 600
    assert unpriced_seconds(runs, {at(60)}, now=at(300)) == 2400 + 600
    assert unpriced_seconds(runs, set(), now=at(300)) == 110 * 60


def test_a_run_still_going_counts_up_to_now_and_never_past_it() -> None:
    assert unpriced_seconds([(at(50), None)], {at(0)}, now=at(75.5)) == Decimal("930")
    assert unpriced_seconds([(at(50), at(90))], set(), now=at(55)) == 300


def test_several_runs_and_fractions_of_a_second_add_up() -> None:
    runs = [(at(0), at(0) + timedelta(seconds=1.5)), (at(10), at(10) + timedelta(seconds=2))]
    assert unpriced_seconds(runs, set(), now=at(60)) == Decimal("3.5")


def test_an_estimate_is_the_hourly_price_per_second_to_six_decimals() -> None:
    assert estimate(Decimal(600), Decimal("0.0544")) == Decimal("0.009067")
    assert estimate(Decimal(0), Decimal("3.60")) == 0
