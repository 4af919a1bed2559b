"""The catalogue an operator keeps: datacenters, hosts, images, price tiers, instance types.

Writes are for admins and audited by the events they publish; reads are open to every signed-in
person except hosts, which only admins see. Registering or changing a host publishes its full
state (``HostRegistered``) for the provisioner of its datacenter; a new rate publishes
``PriceTierChanged`` so billing can price any period with the rates in effect then.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from compgrid_events import uuid7
from compgrid_events.base import Money, utc_now
from compgrid_events.inventory import HostRegistered, PriceTierChanged, gpu_devices_problem
from compgrid_events.inventory_api import (
    AddRates,
    CreateDatacenter,
    CreateImage,
    CreateInstanceType,
    CreatePriceTier,
    DatacenterPublic,
    HostPublic,
    HostRef,
    ImagePublic,
    InstanceTypePublic,
    InstanceTypeRef,
    ListHosts,
    ListInstanceTypes,
    Page,
    PriceTierPublic,
    PriceTierRef,
    Rates,
    RatesFrom,
    RegisterHost,
    UpdateDatacenter,
    UpdateHost,
)
from compgrid_inventory.adapters.repository import resources
from compgrid_inventory.adapters.tables import (
    datacenter,
    host,
    image,
    instance,
    instance_type,
    price_rate,
    price_tier,
)
from compgrid_inventory.adapters.workers import workers_of
from compgrid_inventory.domain.lifecycle import LIVE
from compgrid_inventory.domain.pricing import hourly_price
from compgrid_inventory.use_cases.deps import Deps
from compgrid_runtime.access import require_role
from compgrid_runtime.errors import Conflict, Invalid, NotFound
from compgrid_runtime.rpc import Caller
from compgrid_runtime.uow import UnitOfWork


def _admin(caller: Caller) -> None:
    require_role(caller.require(), "admin")


async def _insert_unique(uow: UnitOfWork, table: Any, values: dict[str, Any], what: str) -> Any:
    """Insert a row whose name is unique; a taken name is a conflict naming the field."""
    statement = pg_insert(table).values(**values).on_conflict_do_nothing().returning(table)
    row = (await uow.session.execute(statement)).first()
    if row is None:
        raise Conflict(f"a {what} with this name exists", code="name_taken", field="name")
    return row


# Datacenters ------------------------------------------------------------------------------


def _datacenter_public(row: Any, hosts: int = 0) -> DatacenterPublic:
    return DatacenterPublic(
        id=row.id,
        name=row.name,
        description=row.description,
        placement=row.placement,
        hosts=hosts,
    )


async def datacenter_by_name(session: AsyncSession, name: str) -> Any:
    """Return a datacenter row by name, or NotFound."""
    row = (await session.execute(select(datacenter).where(datacenter.c.name == name))).first()
    if row is None:
        raise NotFound(f"no datacenter named {name}", code="unknown_datacenter", field="datacenter")
    return row


async def create_datacenter(deps: Deps, caller: Caller, body: CreateDatacenter) -> DatacenterPublic:
    """Add a datacenter (its name routes provisioning commands to its provisioner)."""
    _admin(caller)
    async with deps.uow() as uow:
        row = await _insert_unique(
            uow, datacenter, {"id": uuid7(), **body.model_dump()}, "datacenter"
        )
        await uow.commit()
    return _datacenter_public(row)


async def update_datacenter(deps: Deps, caller: Caller, body: UpdateDatacenter) -> DatacenterPublic:
    """Change a datacenter's placement weighing or description."""
    _admin(caller)
    changes = body.model_dump(exclude_none=True, exclude={"datacenter"})
    if not changes:
        raise Invalid("nothing to change: give placement or description")
    async with deps.uow() as uow:
        current = await datacenter_by_name(uow.session, body.datacenter)
        row = (
            await uow.session.execute(
                update(datacenter)
                .where(datacenter.c.id == current.id)
                .values(**changes)
                .returning(datacenter)
            )
        ).one()
        await uow.commit()
    return _datacenter_public(row)


async def list_datacenters(deps: Deps, caller: Caller, _: object) -> list[DatacenterPublic]:
    """Every datacenter with its number of hosts and its provisioner workers."""
    caller.require()
    async with deps.uow() as uow:
        counts = (
            select(host.c.datacenter_id, func.count().label("hosts"))
            .group_by(host.c.datacenter_id)
            .subquery()
        )
        rows = (
            await uow.session.execute(
                select(datacenter, func.coalesce(counts.c.hosts, 0).label("host_count"))
                .outerjoin(counts, counts.c.datacenter_id == datacenter.c.id)
                .order_by(datacenter.c.name)
            )
        ).all()
        seen = await workers_of(uow.session, [r.name for r in rows])
    return [
        _datacenter_public(r, r.host_count).model_copy(update={"workers": seen.get(r.name, [])})
        for r in rows
    ]


# Hosts ------------------------------------------------------------------------------------


def host_event(row: Any, datacenter_name: str) -> HostRegistered:
    """The full state of a host, for the provisioner of its datacenter."""
    return HostRegistered(
        host_id=row.id,
        name=row.name,
        datacenter=datacenter_name,
        libvirt_uri=row.libvirt_uri,
        state=row.state,
        capacity=resources(row),
        labels=row.labels,
        version=row.version,
    )


def _host_public(row: Any, datacenter_name: str, instances: int = 0) -> HostPublic:
    return HostPublic(
        id=row.id,
        datacenter=datacenter_name,
        name=row.name,
        libvirt_uri=row.libvirt_uri,
        state=row.state,
        vcpus=row.vcpus,
        memory_mib=row.memory_mib,
        disk_gib=row.disk_gib,
        gpus=row.gpus,
        cpu_overcommit=row.cpu_overcommit,
        memory_overcommit=row.memory_overcommit,
        labels=row.labels,
        claimed_vcpus=row.claimed_vcpus,
        claimed_memory_mib=row.claimed_memory_mib,
        claimed_disk_gib=row.claimed_disk_gib,
        claimed_gpus=row.claimed_gpus,
        instances=instances,
        version=row.version,
    )


async def register_host(deps: Deps, caller: Caller, body: RegisterHost) -> HostPublic:
    """Add a hypervisor host to a datacenter."""
    _admin(caller)
    _check_gpu_devices(body.gpus, body.labels)
    async with deps.uow() as uow:
        dc = await datacenter_by_name(uow.session, body.datacenter)
        values = body.model_dump(exclude={"datacenter"})
        statement = (
            pg_insert(host)
            .values(id=uuid7(), datacenter_id=dc.id, **values)
            .on_conflict_do_nothing()
            .returning(host)
        )
        row = (await uow.session.execute(statement)).first()
        if row is None:
            raise Conflict(
                f"datacenter {dc.name} has a host named {body.name}",
                code="name_taken",
                field="name",
            )
        uow.emit(host_event(row, dc.name))
        await uow.commit()
    return _host_public(row, dc.name)


async def _host_row(session: AsyncSession, host_id: UUID, *, lock: bool = False) -> Any:
    query = (
        select(host, datacenter.c.name.label("datacenter_name"))
        .join(datacenter, datacenter.c.id == host.c.datacenter_id)
        .where(host.c.id == host_id)
    )
    row = (await session.execute(query.with_for_update(of=host) if lock else query)).first()
    if row is None:
        raise NotFound("no such host", field="host_id")
    return row


async def update_host(deps: Deps, caller: Caller, body: UpdateHost) -> HostPublic:
    """Change a host's state, size, overcommit or labels; never below what is claimed on it."""
    _admin(caller)
    changes = body.model_dump(exclude_none=True, exclude={"host_id", "expected_version"})
    if not changes:
        raise Invalid("nothing to change")
    async with deps.uow() as uow:
        current = await _host_row(uow.session, body.host_id, lock=True)
        if body.expected_version is not None and current.version != body.expected_version:
            raise Conflict(f"host is at version {current.version}", code="version_mismatch")
        merged = {**current._asdict(), **changes}
        _check_gpu_devices(merged["gpus"], merged["labels"])
        _check_claims_fit(merged, current)
        row = await set_host(uow, current.id, current.datacenter_name, **changes)
        await uow.commit()
    return _host_public(row, current.datacenter_name)


def _check_gpu_devices(gpus: Mapping[str, int], labels: Mapping[str, str]) -> None:
    """Refuse GPUs the provisioner could not pass through (each needs its PCI address)."""
    problem = gpu_devices_problem(gpus, labels)
    if problem is not None:
        raise Invalid(problem, code="gpu_devices", field="labels")


def _check_claims_fit(merged: Mapping[str, Any], current: Any) -> None:
    """Refuse a smaller size that what is claimed on the host already needs."""
    checks = (
        ("vcpus", current.claimed_vcpus, int(merged["vcpus"] * merged["cpu_overcommit"])),
        (
            "memory_mib",
            current.claimed_memory_mib,
            int(merged["memory_mib"] * merged["memory_overcommit"]),
        ),
        ("disk_gib", current.claimed_disk_gib, merged["disk_gib"]),
    )
    for name, claimed, limit in checks:
        if claimed > limit:
            raise Conflict(
                f"{name}: instances on this host already claim {claimed}; shrink it after they"
                " are gone or moved",
                code="capacity_in_use",
                field=name,
            )
    for model, claimed in current.claimed_gpus.items():
        if claimed > merged["gpus"].get(model, 0):
            raise Conflict(
                f"gpus: instances on this host claim {claimed} {model}",
                code="capacity_in_use",
                field="gpus",
            )


async def set_host(uow: UnitOfWork, host_id: UUID, datacenter_name: str, **changes: Any) -> Any:
    """Write host changes, bump its version and publish its new state."""
    row = (
        await uow.session.execute(
            update(host)
            .where(host.c.id == host_id)
            .values(**changes, version=host.c.version + 1)
            .returning(host)
        )
    ).one()
    uow.emit(host_event(row, datacenter_name))
    return row


async def get_host(deps: Deps, caller: Caller, body: HostRef) -> HostPublic:
    """One host with what is claimed on it."""
    _admin(caller)
    async with deps.uow() as uow:
        row = await _host_row(uow.session, body.host_id)
        count = await _live_instances(uow.session, [row.id])
    return _host_public(row, row.datacenter_name, count.get(row.id, 0))


async def _live_instances(session: AsyncSession, host_ids: list[UUID]) -> dict[UUID, int]:
    rows = await session.execute(
        select(instance.c.host_id, func.count())
        .where(instance.c.host_id.in_(host_ids), instance.c.state.in_([s.value for s in LIVE]))
        .group_by(instance.c.host_id)
    )
    return {row[0]: row[1] for row in rows.all()}


async def list_hosts(deps: Deps, caller: Caller, body: ListHosts) -> Page[HostPublic]:
    """Hosts by datacenter and name, filtered by datacenter and state."""
    _admin(caller)
    query = (
        select(host, datacenter.c.name.label("datacenter_name"))
        .join(datacenter, datacenter.c.id == host.c.datacenter_id)
        .order_by(datacenter.c.name, host.c.name)
        .limit(body.limit + 1)
    )
    if body.datacenter is not None:
        query = query.where(datacenter.c.name == body.datacenter)
    if body.state is not None:
        query = query.where(host.c.state == body.state.value)
    if body.after is not None:
        dc_name, _, host_name = body.after.partition("/")
        query = query.where(func.row(datacenter.c.name, host.c.name) > func.row(dc_name, host_name))
    async with deps.uow() as uow:
        rows = (await uow.session.execute(query)).all()
        counts = await _live_instances(uow.session, [r.id for r in rows])
    items = [_host_public(r, r.datacenter_name, counts.get(r.id, 0)) for r in rows[: body.limit]]
    more = len(rows) > body.limit
    return Page(
        items=items, next_cursor=f"{items[-1].datacenter}/{items[-1].name}" if more else None
    )


# Images -----------------------------------------------------------------------------------


def _image_public(row: Any) -> ImagePublic:
    return ImagePublic(
        id=row.id,
        name=row.name,
        system_type=row.system_type,
        format=row.format,
        source=row.source,
        default_user=row.default_user,
        description=row.description,
    )


async def create_image(deps: Deps, caller: Caller, body: CreateImage) -> ImagePublic:
    """Register an image the provisioners can find at its source."""
    _admin(caller)
    async with deps.uow() as uow:
        row = await _insert_unique(uow, image, {"id": uuid7(), **body.model_dump()}, "image")
        await uow.commit()
    return _image_public(row)


async def list_images(deps: Deps, caller: Caller, _: object) -> list[ImagePublic]:
    """Every image."""
    caller.require()
    async with deps.uow() as uow:
        rows = (await uow.session.execute(select(image).order_by(image.c.name))).all()
    return [_image_public(r) for r in rows]


# Price tiers ------------------------------------------------------------------------------


def _rates(row: Any) -> Rates:
    return Rates(
        vcpu_hour=row.vcpu_hour,
        memory_gib_hour=row.memory_gib_hour,
        storage_gib_month=row.storage_gib_month,
        gpu_hour={k: Decimal(v) for k, v in row.gpu_hour.items()},
    )


def _check_whole_hour(effective_from: datetime) -> None:
    """Refuse a change that billing would apply from another moment than the one given.

    Billing prices each closed hour at the rates in effect at the hour's start, so a change
    takes effect on whole UTC hours only (decision 0015).
    """
    if (effective_from.minute, effective_from.second, effective_from.microsecond) != (0, 0, 0):
        raise Invalid(
            "effective_from: rates change on a whole UTC hour (e.g."
            f" {effective_from.replace(minute=0, second=0, microsecond=0).isoformat()}): usage"
            " is priced per hour at the rates in effect when the hour starts",
            code="not_whole_hour",
            field="effective_from",
        )


async def _add_rates(uow: UnitOfWork, tier: Any, effective_from: datetime, rates: Rates) -> None:
    _check_whole_hour(effective_from)
    kinds = await uow.session.execute(
        select(instance_type).where(instance_type.c.price_tier_id == tier.id)
    )
    for kind in kinds.all():  # every type of the tier must stay priced, retired ones too
        hourly_price(
            rates,
            vcpus=kind.vcpus,
            memory_mib=kind.memory_mib,
            disk_gib=kind.disk_gib,
            gpus=kind.gpus,
        )
    statement = (
        pg_insert(price_rate)
        .values(
            id=uuid7(),
            price_tier_id=tier.id,
            effective_from=effective_from,
            vcpu_hour=rates.vcpu_hour,
            memory_gib_hour=rates.memory_gib_hour,
            storage_gib_month=rates.storage_gib_month,
            gpu_hour={k: str(v) for k, v in rates.gpu_hour.items()},
        )
        .on_conflict_do_nothing()
        .returning(price_rate.c.id)
    )
    if (await uow.session.execute(statement)).first() is None:
        raise Conflict(
            f"tier {tier.name} has rates from {effective_from.isoformat()} already",
            code="rates_exist",
            field="effective_from",
        )
    uow.emit(
        PriceTierChanged(
            price_tier_id=tier.id,
            name=tier.name,
            currency=tier.currency,
            effective_from=effective_from,
            vcpu_hour_amount=rates.vcpu_hour,
            memory_gib_hour_amount=rates.memory_gib_hour,
            storage_gib_month_amount=rates.storage_gib_month,
            gpu_hour_amounts=dict(rates.gpu_hour),
        )
    )


async def create_price_tier(deps: Deps, caller: Caller, body: CreatePriceTier) -> PriceTierPublic:
    """A new tier with its first rates."""
    _admin(caller)
    async with deps.uow() as uow:
        tier = await _insert_unique(
            uow,
            price_tier,
            {"id": uuid7(), "name": body.name, "currency": body.currency},
            "price tier",
        )
        await _add_rates(uow, tier, body.effective_from, body.rates)
        await uow.commit()
        return await _tier_public(uow.session, tier)


async def add_rates(deps: Deps, caller: Caller, body: AddRates) -> PriceTierPublic:
    """New rates for a tier from a date on; earlier rates stay for the periods before it."""
    _admin(caller)
    async with deps.uow() as uow:
        tier = await _tier_row(uow.session, body.price_tier_id, lock=True)
        await _add_rates(uow, tier, body.effective_from, body.rates)
        await uow.commit()
        return await _tier_public(uow.session, tier)


async def _tier_row(session: AsyncSession, tier_id: UUID, *, lock: bool = False) -> Any:
    query = select(price_tier).where(price_tier.c.id == tier_id)
    row = (await session.execute(query.with_for_update() if lock else query)).first()
    if row is None:
        raise NotFound("no such price tier", field="price_tier_id")
    return row


async def _tier_public(session: AsyncSession, tier: Any) -> PriceTierPublic:
    rows = (
        await session.execute(
            select(price_rate)
            .where(price_rate.c.price_tier_id == tier.id)
            .order_by(price_rate.c.effective_from)
        )
    ).all()
    history = [RatesFrom(effective_from=r.effective_from, rates=_rates(r)) for r in rows]
    now = utc_now()
    current = [h for h in history if h.effective_from <= now]
    return PriceTierPublic(
        id=tier.id,
        name=tier.name,
        currency=tier.currency,
        current=current[-1] if current else None,
        history=history,
    )


async def get_price_tier(deps: Deps, caller: Caller, body: PriceTierRef) -> PriceTierPublic:
    """One tier with its current rates and history."""
    caller.require()
    async with deps.uow() as uow:
        return await _tier_public(uow.session, await _tier_row(uow.session, body.price_tier_id))


async def list_price_tiers(deps: Deps, caller: Caller, _: object) -> list[PriceTierPublic]:
    """Every tier with its current rates and history."""
    caller.require()
    async with deps.uow() as uow:
        tiers = (await uow.session.execute(select(price_tier).order_by(price_tier.c.name))).all()
        return [await _tier_public(uow.session, t) for t in tiers]


async def current_rates(session: AsyncSession, tier_id: UUID) -> Rates | None:
    """The rates of a tier in effect now, or None before its first rates apply."""
    row = (
        await session.execute(
            select(price_rate)
            .where(price_rate.c.price_tier_id == tier_id, price_rate.c.effective_from <= func.now())
            .order_by(price_rate.c.effective_from.desc())
            .limit(1)
        )
    ).first()
    return None if row is None else _rates(row)


# Instance types ---------------------------------------------------------------------------


async def current_price(session: AsyncSession, kind: Any) -> Decimal | None:
    """One hour of an instance type at its tier's rates in effect now (None: not priced now)."""
    rates = await current_rates(session, kind.price_tier_id)
    if rates is None or not set(kind.gpus) <= set(rates.gpu_hour):
        return None
    return hourly_price(
        rates, vcpus=kind.vcpus, memory_mib=kind.memory_mib, disk_gib=kind.disk_gib, gpus=kind.gpus
    )


async def _type_public(
    session: AsyncSession, row: Any, tier_name: str, currency: str
) -> InstanceTypePublic:
    amount = await current_price(session, row)
    price = None if amount is None else Money(amount=amount, currency=currency)
    return InstanceTypePublic(
        id=row.id,
        name=row.name,
        vcpus=row.vcpus,
        memory_mib=row.memory_mib,
        disk_gib=row.disk_gib,
        gpus=row.gpus,
        system_types=row.system_types,
        price_tier_id=row.price_tier_id,
        price_tier=tier_name,
        hourly_price=price,
        description=row.description,
        retired_at=row.retired_at,
    )


async def create_instance_type(
    deps: Deps, caller: Caller, body: CreateInstanceType
) -> InstanceTypePublic:
    """A size researchers can ask for; its tier must price every GPU model it has."""
    _admin(caller)
    async with deps.uow() as uow:
        tier = await _tier_row(uow.session, body.price_tier_id)
        history = await _tier_public(uow.session, tier)
        for entry in history.history:
            hourly_price(
                entry.rates,
                vcpus=body.vcpus,
                memory_mib=body.memory_mib,
                disk_gib=body.disk_gib,
                gpus=body.gpus,
            )
        values = body.model_dump()
        values["system_types"] = sorted(set(body.system_types))
        row = await _insert_unique(uow, instance_type, {"id": uuid7(), **values}, "instance type")
        await uow.commit()
        return await _type_public(uow.session, row, tier.name, tier.currency)


async def _types(session: AsyncSession, include_retired: bool) -> list[Any]:
    query = (
        select(instance_type, price_tier.c.name.label("tier_name"), price_tier.c.currency)
        .join(price_tier, price_tier.c.id == instance_type.c.price_tier_id)
        .order_by(instance_type.c.name)
    )
    if not include_retired:
        query = query.where(instance_type.c.retired_at.is_(None))
    return list((await session.execute(query)).all())


async def list_instance_types(
    deps: Deps, caller: Caller, body: ListInstanceTypes
) -> list[InstanceTypePublic]:
    """Instance types with their hourly prices, cheapest information first by name."""
    caller.require()
    async with deps.uow() as uow:
        return [
            await _type_public(uow.session, row, row.tier_name, row.currency)
            for row in await _types(uow.session, body.include_retired)
        ]


async def retire_instance_type(
    deps: Deps, caller: Caller, body: InstanceTypeRef
) -> InstanceTypePublic:
    """No new instances of this type; running ones keep running."""
    _admin(caller)
    async with deps.uow() as uow:
        row = (
            await uow.session.execute(
                update(instance_type)
                .where(instance_type.c.id == body.instance_type_id)
                .values(retired_at=func.coalesce(instance_type.c.retired_at, func.now()))
                .returning(instance_type)
            )
        ).first()
        if row is None:
            raise NotFound("no such instance type", field="instance_type_id")
        tier = await _tier_row(uow.session, row.price_tier_id)
        await uow.commit()
        return await _type_public(uow.session, row, tier.name, tier.currency)
