"""Provisioner workers: their heartbeats, and commands no worker is there to take up.

Placement only uses datacenters with a live worker, but a worker may die after the command went
out. An instance still ``scheduled`` ``command_timeout_s`` after its command, in a datacenter
with no live worker, fails with that reason (claim and hold go back); a delete command is also
sent, so a worker that comes back later removes whatever it creates from the old command. An
instance ``deleting`` that never reached a hypervisor (no provisioner report ever arrived) is
deleted at once when no worker is live, or by the same timeout when its worker died meanwhile.
Each round runs in one process at a time (a transaction-scoped advisory lock).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import text

from compgrid_events.base import utc_now
from compgrid_events.inventory import InstanceDeleteRequested, InstanceState
from compgrid_events.provisioner import WorkerHeartbeat
from compgrid_inventory.adapters import workers
from compgrid_inventory.adapters.repository import instance_query
from compgrid_inventory.adapters.tables import instance
from compgrid_inventory.domain.placement import unserved_reason
from compgrid_inventory.use_cases.deps import Deps
from compgrid_inventory.use_cases.lifecycle import transition
from compgrid_runtime.logs import get_logger
from compgrid_runtime.uow import UnitOfWork

log = get_logger(__name__)
S = InstanceState
COMMANDS_LOCK = 0xC0DE


async def on_heartbeat(deps: Deps, beats: list[WorkerHeartbeat]) -> None:
    """Remember when each worker was last heard from (idempotent, so no inbox)."""
    async with deps.uow() as uow:
        for beat in beats:
            await workers.record(uow.session, beat)
        await uow.commit()


def cleanup_command(row: Any) -> InstanceDeleteRequested:
    """A delete for whatever a late worker may still create from an old command."""
    return InstanceDeleteRequested(
        instance_id=row.id, version=row.version, datacenter=row.datacenter_name, host=row.host_name
    )


async def _unserved(
    uow: UnitOfWork, state: S, older_than_s: float, *, never_observed: bool = False
) -> list[Any]:
    """Instances in ``state`` commanded over ``older_than_s`` ago in a datacenter no worker
    serves (locked; rows another round holds are skipped)."""
    query = instance_query().where(
        instance.c.state == state.value,
        instance.c.commanded_at < utc_now() - timedelta(seconds=older_than_s),
        text(f"NOT {workers.live_in('datacenter.name')}"),
    )
    if never_observed:
        query = query.where(instance.c.observed_at.is_(None))
    locked = query.with_for_update(of=instance, skip_locked=True)
    return list((await uow.session.execute(locked)).all())


async def expire_commands(deps: Deps) -> dict[str, int]:
    """One round: fail or delete instances whose commands no worker takes up."""
    bound = deps.settings.command_timeout_s
    done = {"failed": 0, "deleted": 0}
    async with deps.uow() as uow:
        if not await uow.session.scalar(text(f"SELECT pg_try_advisory_xact_lock({COMMANDS_LOCK})")):
            return done
        for row in await _unserved(uow, S.SCHEDULED, bound):
            reason = f"{unserved_reason(row.datacenter_name)}: not created within {bound:g} s"
            row = await transition(uow, row, S.FAILED, reason_code="no_provisioner", reason=reason)
            uow.emit(cleanup_command(row))
            done["failed"] += 1
        for row in await _unserved(uow, S.DELETING, bound, never_observed=True):
            # its delete command is in the stream already, for a worker that comes back
            await transition(uow, row, S.DELETED, reason="it never reached a hypervisor")
            done["deleted"] += 1
        await workers.forget_old(uow.session, utc_now())
        await uow.commit()
    if any(done.values()):
        log.warning("commands nobody took up", **done)
    return done
