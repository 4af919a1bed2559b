"""Provisioner workers as their heartbeats show them, and the one rule of who is live.

A worker is live while it is not stopping and its last heartbeat is younger than
``MISSED_HEARTBEATS`` of its own intervals: a worker that misses three beats in a row is gone.
``LIVE_IN`` is that rule as SQL, used by placement (``claims.py``) and by the command timeouts,
so both always agree on which datacenters have a provisioner.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from compgrid_events.inventory_api import WorkerPublic
from compgrid_events.provisioner import WorkerHeartbeat
from compgrid_inventory.adapters.tables import worker

MISSED_HEARTBEATS = 3
SHOWN_FOR = timedelta(days=1)
"""A worker not heard from for this long is forgotten."""


def _alive(alias: str) -> str:
    """SQL: the worker row ``alias`` is live."""
    return (
        f"{alias}.stopped_at IS NULL AND {alias}.last_seen_at"
        f" > now() - make_interval(secs => {alias}.interval_s * {MISSED_HEARTBEATS})"
    )


def live_in(datacenter_name: str) -> str:
    """SQL: the datacenter named by the expression ``datacenter_name`` has a live worker."""
    return (
        "EXISTS (SELECT 1 FROM inventory.worker w"
        f" WHERE w.datacenter = {datacenter_name} AND {_alive('w')})"
    )


async def record(session: AsyncSession, beat: WorkerHeartbeat) -> None:
    """Keep the newest heartbeat of a worker (an older one arriving late changes nothing)."""
    # The worker's clock, but never ahead of ours: a fast clock must not keep a dead worker live.
    seen = func.least(beat.occurred_at, func.now())
    values = {
        "datacenter": beat.datacenter,
        "hostname": beat.hostname,
        "pid": beat.pid,
        "started_at": beat.started_at,
        "last_seen_at": seen,
        "interval_s": beat.interval_s,
        "stopped_at": seen if beat.stopping else None,
    }
    statement = pg_insert(worker).values(id=beat.worker_id, **values)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[worker.c.id],
            set_=values,
            where=worker.c.last_seen_at < statement.excluded.last_seen_at,
        )
    )


async def has_live_worker(session: AsyncSession, datacenter_name: str) -> bool:
    """Whether a live worker serves the datacenter now."""
    return bool(await session.scalar(text(f"SELECT {live_in(':name')}"), {"name": datacenter_name}))


async def workers_of(
    session: AsyncSession, datacenters: Iterable[str]
) -> dict[str, list[WorkerPublic]]:
    """The workers heard from lately of each datacenter, newest first."""
    rows = (
        await session.execute(
            select(worker, text(f"({_alive('worker')}) AS live"))
            .where(
                worker.c.datacenter.in_(list(datacenters)),
                worker.c.last_seen_at > func.now() - SHOWN_FOR,
            )
            .order_by(worker.c.datacenter, worker.c.last_seen_at.desc())
        )
    ).all()
    found: dict[str, list[WorkerPublic]] = {}
    for row in rows:
        found.setdefault(row.datacenter, []).append(
            WorkerPublic(
                worker_id=row.id,
                hostname=row.hostname,
                started_at=row.started_at,
                last_seen_at=row.last_seen_at,
                live=row.live,
            )
        )
    return found


async def forget_old(session: AsyncSession, now: datetime) -> None:
    """Drop workers not heard from for ``SHOWN_FOR``."""
    await session.execute(worker.delete().where(worker.c.last_seen_at < now - SHOWN_FOR))
