"""Reading and writing the instance map, and the reports and usage it implies.

Every function here runs inside the caller's unit of work: the row change and the events it
implies (results for the inventory, usage for metering) commit together or not at all.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import select, update
from sqlalchemy.engine import Row

from compgrid_events.base import utc_now
from compgrid_events.provisioner import (
    InstanceDeleted,
    InstanceFailed,
    InstanceStarted,
    InstanceStopped,
    InstanceUsage,
    UsageTick,
)
from compgrid_provisioner.adapters.hypervisor import Sample
from compgrid_provisioner.adapters.tables import host, instance
from compgrid_provisioner.domain.usage import Observation, cpu_used, tick_id
from compgrid_runtime.uow import UnitOfWork


async def lock_instance(uow: UnitOfWork, instance_id: UUID) -> Row[Any] | None:
    """The instance's row, locked until the unit of work ends (one actor per instance)."""
    return (
        await uow.session.execute(
            select(instance).where(instance.c.id == instance_id).with_for_update()
        )
    ).first()


async def host_uri(uow: UnitOfWork, datacenter: str, name: str) -> str | None:
    """The libvirt URI of a host of the datacenter, from the inventory's host events."""
    found = await uow.session.scalar(
        select(host.c.libvirt_uri).where(host.c.datacenter == datacenter, host.c.name == name)
    )
    return str(found) if found is not None else None


async def set_instance(uow: UnitOfWork, instance_id: UUID, **values: Any) -> None:
    """Change an instance's row."""
    await uow.session.execute(
        update(instance).where(instance.c.id == instance_id).values(updated_at=utc_now(), **values)
    )


def _about(row: Row[Any], command_event_id: UUID | None) -> dict[str, Any]:
    """What every report of an instance says: which instance, where, and in answer to what."""
    return {
        "instance_id": row.id,
        "datacenter": row.datacenter,
        "host": row.host,
        "command_event_id": command_event_id,
    }


def usage_of(row: Row[Any], seen: Observation, memory_used_mib: float) -> InstanceUsage:
    """One instance's usage over an observed interval."""
    seconds = (seen.until - seen.since).total_seconds()
    return InstanceUsage(
        instance_id=row.id,
        project_id=row.project_id,
        budget_code_id=row.budget_code_id,
        started_at=seen.since,
        ended_at=seen.until,
        vcpus=row.vcpus,
        memory_mib=row.memory_mib,
        gpus=dict(row.gpus),
        cpu_time_ns=cpu_used(row.cpu_time_ns, seen.cpu_time_ns, seconds, row.vcpus),
        memory_used_mib=Decimal(str(round(memory_used_mib, 3))),
    )


def emit_tick(uow: UnitOfWork, datacenter: str, host_name: str, usage: list[InstanceUsage]) -> None:
    """One usage tick for a host, with a deterministic id."""
    if not usage:
        return
    observations = [
        Observation(u.instance_id, u.started_at, u.ended_at, u.cpu_time_ns) for u in usage
    ]
    uow.emit(
        UsageTick(
            datacenter=datacenter,
            host=host_name,
            tick_id=tick_id(datacenter, host_name, observations),
            samples=tuple(usage),
        )
    )


def close_interval(
    uow: UnitOfWork, row: Row[Any], until: datetime, sample: Sample | None
) -> dict[str, Any]:
    """Close a running instance's open interval at ``until`` and send it (start and stop close
    partial intervals, so billed seconds equal running seconds); return the row's new values,
    for the caller to write together with the new observed state."""
    if row.metered_from is None:
        return {}
    until = max(until, row.metered_from)
    cpu_now = sample.cpu_time_ns if sample is not None else row.cpu_time_ns
    memory = sample.memory_used_mib if sample is not None else float(row.memory_mib)
    seen = Observation(row.id, row.metered_from, until, cpu_now)
    emit_tick(uow, row.datacenter, row.host, [usage_of(row, seen, memory)])
    return {"metered_from": None, "cpu_time_ns": 0}


async def mark_running(
    uow: UnitOfWork,
    row: Row[Any],
    *,
    cpu_time_ns: int,
    addresses: tuple[str, ...],
    domain_uuid: UUID,
    command_event_id: UUID | None,
    **also: Any,
) -> None:
    """Record the instance running from now (opening its first interval) and report it;
    ``also`` are more columns to write with it."""
    now = utc_now()
    values: dict[str, Any] = {"observed": "running", "reason": "", **also}
    if row.metered_from is None:
        values |= {"metered_from": now, "cpu_time_ns": cpu_time_ns}
    await set_instance(uow, row.id, **values)
    uow.emit(
        InstanceStarted(
            **_about(row, command_event_id),
            domain_uuid=domain_uuid,
            addresses=addresses,
            started_at=now,
        )
    )


async def mark_stopped(
    uow: UnitOfWork,
    row: Row[Any],
    *,
    sample: Sample | None,
    reason: str,
    command_event_id: UUID | None,
) -> None:
    """Record the instance stopped (closing its last interval) and report it."""
    now = utc_now()
    closed = close_interval(uow, row, now, sample)
    await set_instance(uow, row.id, observed="stopped", reason=reason[:1000], **closed)
    uow.emit(
        InstanceStopped(
            **_about(row, command_event_id),
            stopped_at=now,
            reason=reason,
        )
    )


async def mark_failed(
    uow: UnitOfWork,
    row: Row[Any],
    *,
    reason: str,
    sample: Sample | None = None,
    command_event_id: UUID | None = None,
) -> None:
    """Record the instance failed (closing any open interval) and report why."""
    closed = close_interval(uow, row, utc_now(), sample)
    await set_instance(uow, row.id, observed="failed", reason=reason[:1000], **closed)
    uow.emit(
        InstanceFailed(
            **_about(row, command_event_id),
            reason=reason,
        )
    )


async def mark_deleted(
    uow: UnitOfWork, row: Row[Any], *, sample: Sample | None, command_event_id: UUID | None
) -> None:
    """Record the domain and its volumes gone and report it."""
    closed = close_interval(uow, row, utc_now(), sample)
    await set_instance(uow, row.id, observed="deleted", desired="deleted", **closed)
    uow.emit(
        InstanceDeleted(
            **_about(row, command_event_id),
        )
    )
