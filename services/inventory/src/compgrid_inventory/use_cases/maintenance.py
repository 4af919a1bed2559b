"""Periodic upkeep: leases run out, and claims are checked against instances.

Leases: an owner is warned (``LeaseExpiring``) ``lease_warn_before_s`` ahead; at the end the
instance is stopped; ``lease_grace_s`` later it is deleted. Claims: a claim without a live
instance is given back, a live instance on a host without a claim gets one again, and hosts
whose counters disagree with their claims are recounted. Each round runs in one process at a
time (a transaction-scoped advisory lock), so several inventory processes can run the jobs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, text, update

from compgrid_events.base import utc_now
from compgrid_events.inventory import InstanceState, LeaseExpiring
from compgrid_events.inventory_api import RepairReport
from compgrid_inventory.adapters.repository import instance_query
from compgrid_inventory.adapters.tables import claim, host, instance
from compgrid_inventory.domain.lifecycle import LIVE, UP
from compgrid_inventory.use_cases.deps import Deps
from compgrid_inventory.use_cases.lifecycle import demand_of, request_delete, request_stop
from compgrid_runtime.access import require_role
from compgrid_runtime.logs import get_logger
from compgrid_runtime.rpc import Caller
from compgrid_runtime.uow import UnitOfWork

log = get_logger(__name__)
S = InstanceState
LEASES_LOCK = 0x1EA5E
REPAIR_LOCK = 0xC1A1


async def _leader(uow: UnitOfWork, key: int) -> bool:
    return bool(await uow.session.scalar(text(f"SELECT pg_try_advisory_xact_lock({key})")))


async def expire_leases(deps: Deps) -> dict[str, int]:
    """One round of lease upkeep; return how many instances were warned, stopped, deleted."""
    now = utc_now()
    settings = deps.settings
    done = {"warned": 0, "stopped": 0, "deleted": 0}
    async with deps.uow() as uow:
        if not await _leader(uow, LEASES_LOCK):
            return done
        leased = instance_query().where(instance.c.lease_ends_at.is_not(None))
        warn = await uow.session.execute(
            leased.where(
                instance.c.lease_warned_at.is_(None),
                instance.c.state.in_([s.value for s in LIVE - {S.DELETING}]),
                instance.c.lease_ends_at <= now + timedelta(seconds=settings.lease_warn_before_s),
            ).with_for_update(of=instance)
        )
        for row in warn.all():
            uow.emit(
                LeaseExpiring(
                    instance_id=row.id,
                    version=row.version,
                    name=row.name,
                    project_id=row.project_id,
                    owner=row.requested_by,
                    lease_ends_at=row.lease_ends_at,
                    deleted_after=row.lease_ends_at + timedelta(seconds=settings.lease_grace_s),
                )
            )
            await uow.session.execute(
                update(instance).where(instance.c.id == row.id).values(lease_warned_at=now)
            )
            done["warned"] += 1
        ended = await uow.session.execute(
            leased.where(
                instance.c.lease_stopped_at.is_(None),
                instance.c.state.in_([s.value for s in UP]),
                instance.c.lease_ends_at <= now,
            ).with_for_update(of=instance)
        )
        for row in ended.all():
            row = await request_stop(uow, row, "the lease ended", reason_code="lease_ended")
            await uow.session.execute(
                update(instance).where(instance.c.id == row.id).values(lease_stopped_at=now)
            )
            done["stopped"] += 1
        overdue = await uow.session.execute(
            leased.where(
                instance.c.state.in_([S.STOPPED.value, S.FAILED.value, S.PENDING_APPROVAL.value]),
                instance.c.lease_ends_at <= now - timedelta(seconds=settings.lease_grace_s),
            ).with_for_update(of=instance)
        )
        for row in overdue.all():
            await request_delete(uow, row, "the lease ended and its grace period is over")
            done["deleted"] += 1
        await uow.commit()
    if any(done.values()):
        log.info("leases", **done)
    return done


async def repair_claims(deps: Deps) -> RepairReport:
    """Make claims and host counters agree with the instances; return what was fixed."""
    async with deps.uow() as uow:
        if not await _leader(uow, REPAIR_LOCK):
            return RepairReport(
                orphan_claims_released=0, missing_claims_restored=0, hosts_recounted=0
            )
        session = uow.session
        live = [s.value for s in LIVE]
        orphans = (
            (
                await session.execute(
                    select(claim.c.id)
                    .outerjoin(instance, instance.c.id == claim.c.id)
                    .where((instance.c.id.is_(None)) | (instance.c.state.not_in(live)))
                )
            )
            .scalars()
            .all()
        )
        # Dropped without touching the host: the recount below sets its counters from the
        # claims that remain, whether or not the orphan had ever been counted.
        if orphans:
            await session.execute(delete(claim).where(claim.c.id.in_(orphans)))
        missing = (
            await session.execute(
                select(instance)
                .outerjoin(claim, claim.c.id == instance.c.id)
                .where(
                    instance.c.state.in_(live),
                    instance.c.host_id.is_not(None),
                    claim.c.id.is_(None),
                )
            )
        ).all()
        for row in missing:
            await _restore(uow, row)
        recounted = await _recount(uow)
        await uow.commit()
    report = RepairReport(
        orphan_claims_released=len(orphans),
        missing_claims_restored=len(missing),
        hosts_recounted=recounted,
    )
    if orphans or missing or recounted:
        log.warning("claims repaired", **report.model_dump())
    return report


async def _restore(uow: UnitOfWork, row: Any) -> None:
    """Record the claim a live instance lost and add it to its host's counters."""
    demand = demand_of(row)
    await uow.session.execute(
        claim.insert().values(
            id=row.id,
            host_id=row.host_id,
            vcpus=demand.vcpus,
            memory_mib=demand.memory_mib,
            disk_gib=demand.disk_gib,
            gpus=dict(demand.gpus),
        )
    )


async def _recount(uow: UnitOfWork) -> int:
    """Set every host's claimed counters to the sum of its claims; return how many changed.

    Sums past a host's capacity are refused by its check constraint: instances really run
    there beyond what it should take, which an operator must sort out, so it is logged.
    """
    sums = (
        await uow.session.execute(
            text(
                "SELECT h.id, h.claimed_vcpus, h.claimed_memory_mib, h.claimed_disk_gib,"
                " h.claimed_gpus, coalesce(c.vcpus, 0) AS vcpus,"
                " coalesce(c.memory_mib, 0) AS memory_mib, coalesce(c.disk_gib, 0) AS disk_gib,"
                " coalesce(c.gpus, '[]') AS gpus FROM inventory.host h LEFT JOIN ("
                " SELECT host_id, sum(vcpus) AS vcpus, sum(memory_mib) AS memory_mib,"
                " sum(disk_gib) AS disk_gib, jsonb_agg(gpus) AS gpus"
                " FROM inventory.claim GROUP BY host_id) c ON c.host_id = h.id"
                " ORDER BY h.id FOR UPDATE OF h"
            )
        )
    ).all()
    changed = 0
    for row in sums:
        gpus: dict[str, int] = {}
        for entry in row.gpus:
            for model, count in entry.items():
                gpus[model] = gpus.get(model, 0) + int(count)
        counted = {model: n for model, n in row.claimed_gpus.items() if n}
        wanted = (row.vcpus, row.memory_mib, row.disk_gib, gpus)
        if wanted == (row.claimed_vcpus, row.claimed_memory_mib, row.claimed_disk_gib, counted):
            continue
        try:
            async with uow.session.begin_nested():
                await uow.session.execute(
                    update(host)
                    .where(host.c.id == row.id)
                    .values(
                        claimed_vcpus=row.vcpus,
                        claimed_memory_mib=row.memory_mib,
                        claimed_disk_gib=row.disk_gib,
                        claimed_gpus=gpus,
                        version=host.c.version + 1,
                    )
                )
            changed += 1
        except Exception as exc:
            log.error(
                "host claims exceed its capacity; left for an operator",
                host=str(row.id),
                error=repr(exc),
            )
    return changed


async def repair_now(deps: Deps, caller: Caller, _: object) -> RepairReport:
    """An admin runs a claim repair at once."""
    require_role(caller.require(), "admin")
    return await repair_claims(deps)


def every(interval_s: float, job: Callable[[], Awaitable[Any]], name: str) -> Callable[..., Any]:
    """A background step that runs ``job`` every ``interval_s`` seconds, logging failures."""

    async def loop(_: object) -> None:
        while True:
            try:
                await job()
            except Exception as exc:  # the next round tries again
                log.warning("periodic job failed", job=name, error=repr(exc))
            await asyncio.sleep(interval_s)

    return loop
