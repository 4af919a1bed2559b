"""Which Redis counter sets this database has seen, and when each was last rebuilt."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from compgrid_metering.adapters.tables import counter_set


@dataclass(frozen=True)
class CounterSet:
    """The counters under one Redis key prefix."""

    redis_prefix: str
    started_at: datetime
    rebuilds: int
    rebuilt_at: datetime | None


async def get_counter_set(session: AsyncSession, *, prefix: str) -> CounterSet | None:
    """The counter set of a key prefix, if it was ever started."""
    found = (
        await session.execute(select(counter_set).where(counter_set.c.redis_prefix == prefix))
    ).first()
    return CounterSet(**found._mapping) if found is not None else None


async def create_counter_set(session: AsyncSession, *, prefix: str) -> None:
    """Remember that the counters of a key prefix exist (once, whoever comes first)."""
    await session.execute(
        pg_insert(counter_set).values(redis_prefix=prefix).on_conflict_do_nothing()
    )


async def update_counter_set_rebuilt(session: AsyncSession, *, prefix: str) -> None:
    """Count a finished rebuild of a key prefix's counters."""
    await session.execute(
        update(counter_set)
        .where(counter_set.c.redis_prefix == prefix)
        .values(rebuilds=counter_set.c.rebuilds + 1, rebuilt_at=func.now())
    )
