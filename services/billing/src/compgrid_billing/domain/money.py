"""Money rules of DESIGN.md: Decimal only, rounded half-up to the currency's minor unit."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

# ISO 4217 minor units that are not 2 (every other currency has cents).
_MINOR_UNITS = {
    "BHD": 3, "CLP": 0, "ISK": 0, "JOD": 3, "JPY": 0, "KRW": 0, "KWD": 3, "OMR": 3, "TND": 3,
    "UGX": 0, "VND": 0,
}  # fmt: skip

HOURS_PER_MONTH = 730
"""Storage is priced per GiB-month; a month is 730 hours (365 * 24 / 12)."""

AMOUNT_SCALE = HOURS_PER_MONTH * 3600
"""Ledger amounts are money * this (the seconds of a month): resource-seconds * an hourly rate
* 730, or * a monthly rate, are then exact, with no division until a sum is rounded."""


def unscale(scaled: Decimal) -> Decimal:
    """Money from a ledger amount (or a sum of them)."""
    return Decimal(scaled) / AMOUNT_SCALE


def minor_unit(currency: str) -> int:
    """Digits after the decimal point of a currency's smallest unit."""
    return _MINOR_UNITS.get(currency.upper(), 2)


def round_money(amount: Decimal, currency: str) -> Decimal:
    """``amount`` rounded half-up to the currency's minor unit."""
    return amount.quantize(Decimal(1).scaleb(-minor_unit(currency)), rounding=ROUND_HALF_UP)
