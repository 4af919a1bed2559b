"""Closing hourly rollups: Redis counters of past hours into Postgres, and ``UsageRecorded``.

An hour is closed once ``rollup_lateness_s`` has passed since it ended. Each instance's usage
in the hour is written as one row and published (through the outbox, in the same transaction)
as ``UsageRecorded``. Usage that comes in after an hour was closed touches the hour again; the
next round writes the corrected totals with ``revision`` + 1 and publishes them, so late usage
corrects a rollup and is never lost. A round that finds nothing new publishes nothing.
Several metering processes may run rounds: a transaction-scoped advisory lock lets one at a
time do it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from compgrid_events.base import utc_now
from compgrid_events.metering import InstanceIdle, UsageRecorded
from compgrid_events.metering_api import Amounts
from compgrid_metering.adapters.counters import Usage
from compgrid_metering.adapters.tables import rollup
from compgrid_metering.domain.hours import HOUR
from compgrid_metering.use_cases.deps import Deps
from compgrid_runtime.logs import get_logger
from compgrid_runtime.uow import UnitOfWork

log = get_logger(__name__)

_LOCK = "compgrid.metering.rollups"
_IDLE_LOCK = "compgrid.metering.idle"
MILLION = Decimal(1_000_000)


def amounts(usage: Usage) -> Amounts:
    """Whole-number counters as exact decimal resource-seconds."""
    return Amounts(
        running_seconds=Decimal(usage.running_us) / MILLION,
        vcpu_seconds=Decimal(usage.vcpu_us) / MILLION,
        memory_gib_seconds=Decimal(usage.memory_mib_us) / MILLION / 1024,
        gpu_seconds={m: Decimal(us) / MILLION for m, us in sorted(usage.gpu_us.items())},
        cpu_time_seconds=Decimal(usage.cpu_ns) / 1_000_000_000,
    )


def recorded(
    instance_id: UUID, hour: datetime, revision: int, usage: Usage, project: UUID, budget: UUID
) -> UsageRecorded:
    """The event of one instance's closed hour (exact decimals of the whole-number counters)."""
    return UsageRecorded(
        instance_id=instance_id,
        project_id=project,
        budget_code_id=budget,
        hour_start=hour,
        revision=revision,
        **amounts(usage).model_dump(),
    )


def _row_usage(row: Any) -> Usage:
    return Usage(row.running_us, row.vcpu_us, row.memory_mib_us, row.cpu_ns, dict(row.gpu_us))


async def _close_hour(deps: Deps, uow: UnitOfWork, hour: datetime) -> int:
    """Write and publish what changed in one hour; return how many instances changed."""
    found = await deps.counters.hour_instances(hour)
    if not found:
        return 0
    existing = {
        row.instance_id: row
        for row in await uow.session.execute(
            select(rollup).where(rollup.c.hour_start == hour, rollup.c.instance_id.in_(list(found)))
        )
    }
    changed = 0
    for instance_id, (usage, project, budget) in sorted(found.items()):
        before = existing.get(instance_id)
        if before is not None and _row_usage(before) == usage:
            continue
        revision = 1 if before is None else before.revision + 1
        values = {
            "project_id": project,
            "budget_code_id": budget,
            "revision": revision,
            "running_us": usage.running_us,
            "vcpu_us": usage.vcpu_us,
            "memory_mib_us": usage.memory_mib_us,
            "cpu_ns": usage.cpu_ns,
            "gpu_us": usage.gpu_us,
        }
        statement = pg_insert(rollup).values(instance_id=instance_id, hour_start=hour, **values)
        await uow.session.execute(
            statement.on_conflict_do_update(
                index_elements=[rollup.c.instance_id, rollup.c.hour_start],
                set_={**values, "updated_at": func.now()},
            )
        )
        uow.emit(recorded(instance_id, hour, revision, usage, project, budget))
        changed += 1
    return changed


async def close_hours(deps: Deps, now: datetime | None = None) -> int:
    """One round: roll up every touched hour that is closed; return the rows written."""
    if not await deps.counters.intact():
        log.warning("counters incomplete (Redis lost data): no rollups until a rebuild")
        return 0
    now = now or utc_now()
    latest = now - timedelta(seconds=deps.settings.rollup_lateness_s) - HOUR
    written = 0
    for hour, mark in await deps.counters.touched_before(latest):
        async with deps.uow() as uow:
            got = await uow.session.scalar(
                text("SELECT pg_try_advisory_xact_lock(hashtext(:k))"), {"k": _LOCK}
            )
            if not got:
                return written  # another process is rolling up
            written += await _close_hour(deps, uow, hour)
            await uow.commit()
        await deps.counters.forget_touch(hour, mark)
    return written


async def report_idle(deps: Deps) -> int:
    """Publish ``InstanceIdle`` for each idle stretch that lasted ``idle_after_s``: at least
    once (a crash between publishing and marking it reported repeats it), one process at a
    time (an advisory lock)."""
    after = timedelta(seconds=deps.settings.idle_after_s)
    async with deps.uow() as uow:
        got = await uow.session.scalar(
            text("SELECT pg_try_advisory_xact_lock(hashtext(:k))"), {"k": _IDLE_LOCK}
        )
        if not got:
            return 0
        due = [
            stretch
            for stretch in await deps.counters.idle()
            if not stretch.reported and stretch.until - stretch.since >= after
        ]
        for stretch in due:
            percent = (
                Decimal(stretch.cpu_ns * 100) / Decimal(stretch.capacity_ns)
                if stretch.capacity_ns
                else Decimal(0)
            )
            uow.emit(
                InstanceIdle(
                    instance_id=stretch.instance_id,
                    project_id=stretch.project_id,
                    idle_since=stretch.since,
                    cpu_utilisation_percent=round(percent, 3),
                )
            )
        await uow.commit()
    for stretch in due:
        await deps.counters.mark_reported(stretch.instance_id)
    return len(due)
