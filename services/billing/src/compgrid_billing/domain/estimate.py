"""What an instance's hours not priced yet will cost, roughly.

Billing prices an hour once metering has closed it (some minutes after it ended). Until then
the running time billing knows from the instance's lifecycle — each run from the moment it was
reported running until it was reported leaving that state — is counted in every hour that has
no priced usage yet, at the instance's hourly price. The estimate is replaced by the exact
charge when the hour is priced; it never counts an hour twice.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime, timedelta
from decimal import Decimal

HOUR = timedelta(hours=1)
MICRO = Decimal("0.000001")


def hour_of(moment: datetime) -> datetime:
    """The start of the UTC hour ``moment`` falls in."""
    return moment.replace(minute=0, second=0, microsecond=0)


def unpriced_seconds(
    runs: Iterable[tuple[datetime, datetime | None]],
    priced_hours: Collection[datetime],
    now: datetime,
) -> Decimal:
    """Seconds the runs (``stopped`` None: still running) spent in hours not priced yet."""
    total = timedelta()
    for started, stopped in runs:
        cursor, end = started, min(stopped or now, now)
        while cursor < end:
            hour = hour_of(cursor)
            step = min(end, hour + HOUR)
            if hour not in priced_hours:
                total += step - cursor
            cursor = step
    return Decimal(total.days * 86_400 + total.seconds) + Decimal(total.microseconds) / 10**6


def estimate(seconds: Decimal, hourly_price: Decimal) -> Decimal:
    """What ``seconds`` of running cost at ``hourly_price``, to six decimals."""
    return (seconds * hourly_price / 3600).quantize(MICRO)
