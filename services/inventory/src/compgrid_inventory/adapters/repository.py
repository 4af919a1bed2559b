"""Reads and writes of instances and the projections that admission needs."""

from __future__ import annotations

import contextlib
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import Integer, Select, cast, column, func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from compgrid_events.base import Money
from compgrid_events.inventory import GpuCount, InstanceState, Resources
from compgrid_events.inventory_api import InstanceHold, InstancePublic
from compgrid_inventory.adapters.tables import (
    budget,
    datacenter,
    hold,
    host,
    image,
    instance,
    instance_type,
    price_tier,
    project,
)
from compgrid_inventory.domain.admission import Size
from compgrid_inventory.domain.lifecycle import LIVE
from compgrid_runtime.errors import Conflict, NotFound


def instance_query() -> Select[Any]:
    """Instances with the names of their host and datacenter."""
    return (
        select(
            instance,
            host.c.name.label("host_name"),
            host.c.libvirt_uri.label("host_uri"),
            datacenter.c.name.label("datacenter_name"),
        )
        .outerjoin(host, host.c.id == instance.c.host_id)
        .outerjoin(datacenter, datacenter.c.id == host.c.datacenter_id)
    )


async def get_instance(session: AsyncSession, instance_id: UUID, *, lock: bool = False) -> Any:
    """Return one instance row (locked for the transaction when asked), or NotFound."""
    query = instance_query().where(instance.c.id == instance_id)
    if lock:
        query = query.with_for_update(of=instance)
    row = (await session.execute(query)).first()
    if row is None:
        raise NotFound("no such instance", field="instance_id")
    return row


def resources(row: Any) -> Resources:
    """The size of an instance or a host (any row with its size columns) as events carry it."""
    return Resources(
        vcpus=row.vcpus,
        memory_mib=row.memory_mib,
        disk_gib=row.disk_gib,
        gpus=tuple(GpuCount(model=m, count=c) for m, c in sorted(row.gpus.items())),
    )


def _hold(row: Any) -> InstanceHold | None:
    if row.hold_amount is None or row.hold_until is None:
        return None
    hours = Decimal((row.hold_until - row.hold_placed_at).total_seconds()) / 3600
    return InstanceHold(
        amount=Money(amount=row.hold_amount, currency=row.currency),
        hours=hours.quantize(Decimal("0.01")),
        until=row.hold_until,
    )


def instance_public(row: Any) -> InstancePublic:
    """An instance row in public shape."""
    return InstancePublic(
        id=row.id,
        name=row.name,
        project_id=row.project_id,
        budget_code_id=row.budget_code_id,
        requested_by=row.requested_by,
        instance_type=row.instance_type,
        image=row.image,
        vcpus=row.vcpus,
        memory_mib=row.memory_mib,
        disk_gib=row.disk_gib,
        gpus=row.gpus,
        hourly_price=Money(amount=row.hourly_price, currency=row.currency),
        state=InstanceState(row.state),
        version=row.version,
        reason_code=row.reason_code,
        reason=row.reason,
        datacenter=row.datacenter_name,
        host=row.host_name,
        addresses=row.addresses,
        lease_ends_at=row.lease_ends_at,
        hold=_hold(row),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def get_project(session: AsyncSession, project_id: UUID, *, lock: bool = False) -> Any:
    """Return the project projection (locked: admissions of one project go one at a time)."""
    query = select(project).where(project.c.id == project_id)
    row = (await session.execute(query.with_for_update() if lock else query)).first()
    if row is None:
        raise NotFound("no such project", field="project_id")
    return row


async def get_budget(session: AsyncSession, budget_code_id: UUID, project_id: UUID) -> Any:
    """Return a budget code of the project, or NotFound (also for another project's code)."""
    row = (await session.execute(select(budget).where(budget.c.id == budget_code_id))).first()
    if row is None or row.project_id != project_id:
        raise NotFound("no such budget code in this project", field="budget_code_id")
    return row


async def find_budget(session: AsyncSession, ref: str, project_id: UUID) -> Any | None:
    """A budget code of the project by id or code, or None when the projection lacks it."""
    condition = budget.c.code == ref
    with contextlib.suppress(ValueError):
        condition = or_(condition, budget.c.id == UUID(ref))
    query = select(budget).where(condition, budget.c.project_id == project_id)
    return (await session.execute(query)).first()


async def save_budget(session: AsyncSession, budget_code_id: UUID, values: dict[str, Any]) -> None:
    """Keep a budget code as auth describes it (a newer version wins, whatever the order)."""
    statement = pg_insert(budget).values(id=budget_code_id, **values)
    statement = statement.on_conflict_do_update(
        index_elements=[budget.c.id],
        set_=values,
        where=budget.c.auth_version < statement.excluded.auth_version,
    )
    await session.execute(statement)


async def unconfirmed_holds(session: AsyncSession, budget_code_id: UUID) -> Decimal:
    """What admission held on a code that billing has not confirmed yet."""
    total = await session.scalar(
        select(func.coalesce(func.sum(hold.c.amount), 0)).where(
            hold.c.budget_code_id == budget_code_id
        )
    )
    return Decimal(total or 0)


async def project_usage(
    session: AsyncSession, project_id: UUID, excluding: UUID | None = None
) -> Size:
    """What the project's live instances (but ``excluding``) take of its quota."""
    # Summed by the database: a project's instances never travel to the service to be counted.
    gpu_count = (
        select(func.coalesce(func.sum(cast(column("value"), Integer)), 0))
        .select_from(func.jsonb_each_text(instance.c.gpus))
        .scalar_subquery()
    )
    query = select(
        func.count(),
        func.coalesce(func.sum(instance.c.vcpus), 0),
        func.coalesce(func.sum(instance.c.memory_mib), 0),
        func.coalesce(func.sum(gpu_count), 0),
    ).where(instance.c.project_id == project_id, instance.c.state.in_([s.value for s in LIVE]))
    if excluding is not None:
        query = query.where(instance.c.id != excluding)
    count, vcpus, memory_mib, gpus = (await session.execute(query)).one()
    return Size(instances=count, vcpus=int(vcpus), memory_mib=int(memory_mib), gpus=int(gpus))


async def _by_name_or_id(
    session: AsyncSession, query: Select[Any], table: Any, ref: str, field: str, what: str
) -> Any:
    condition = table.c.name == ref
    with contextlib.suppress(ValueError):
        condition = or_(condition, table.c.id == UUID(ref))
    row = (await session.execute(query.where(condition))).first()
    if row is None:
        raise NotFound(f"no {what} {ref}", code=f"unknown_{field}", field=field)
    return row


async def find_type(session: AsyncSession, ref: str) -> Any:
    """An instance type by name or id that takes new instances, with its tier's currency."""
    row = await _by_name_or_id(
        session,
        select(instance_type, price_tier.c.currency).join(
            price_tier, price_tier.c.id == instance_type.c.price_tier_id
        ),
        instance_type,
        ref,
        "instance_type",
        "instance type",
    )
    if row.retired_at is not None:
        raise Conflict(
            f"instance type {row.name} is retired: it takes no new instances",
            code="type_retired",
            field="instance_type",
        )
    return row


async def find_image(session: AsyncSession, ref: str) -> Any:
    """An image by name or id."""
    return await _by_name_or_id(session, select(image), image, ref, "image", "image")
