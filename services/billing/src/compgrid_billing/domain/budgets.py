"""Budget rules: what a code has left, its state for admission, its forecast, its thresholds."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_FLOOR, Decimal

from compgrid_events.billing import BudgetState


@dataclass(frozen=True)
class BudgetView:
    """What billing knows of one budget code at one moment."""

    funding: Decimal
    charged: Decimal
    held: Decimal
    valid_from: date
    valid_to: date
    status: str
    """auth's administrative status: active, suspended or closed"""

    @property
    def available(self) -> Decimal:
        """Funding minus charges minus holds."""
        return self.funding - self.charged - self.held

    @property
    def spent_percent(self) -> Decimal:
        """Charges as a percentage of funding (no funding counts as fully spent)."""
        if self.funding <= 0:
            return Decimal(100) if self.charged > 0 else Decimal(0)
        return self.charged * 100 / self.funding


def state_of(view: BudgetView, today: date) -> BudgetState:
    """What admission may do with the code today."""
    if view.status != "active":
        return BudgetState.BLOCKED
    if today < view.valid_from:
        return BudgetState.NOT_YET_VALID
    if today > view.valid_to:
        return BudgetState.EXPIRED
    if view.charged >= view.funding:
        return BudgetState.EXHAUSTED
    return BudgetState.OPEN


def runs_out_on(view: BudgetView, burn_per_day: Decimal, today: date) -> date | None:
    """The day the funding runs out at the recent burn rate (None: it is not being spent)."""
    remaining = view.funding - view.charged
    if remaining <= 0:
        return today
    if burn_per_day <= 0:
        return None
    days = (remaining / burn_per_day).to_integral_value(rounding=ROUND_FLOOR)
    if days > 365 * 100:
        return None
    return today + timedelta(days=int(days))


def crossed(view: BudgetView, thresholds: Iterable[Decimal]) -> list[Decimal]:
    """The soft thresholds (percent of funding) the charges have reached, lowest first."""
    spent = view.spent_percent
    return sorted(t for t in set(thresholds) if spent >= t)
