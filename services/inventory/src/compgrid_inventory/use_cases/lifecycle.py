"""Moving an instance through its lifecycle: one place that writes the state and says so.

Every change bumps the instance's version and publishes ``InstanceStateChanged`` in the same
transaction; leaving the live states gives the host claim and the admission hold back.
Admission (quota, budget, placement) also lives here because a request and an approval run it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from compgrid_events.base import Money, utc_now
from compgrid_events.inventory import (
    InstanceDeleteRequested,
    InstanceRejected,
    InstanceRequested,
    InstanceScheduled,
    InstanceState,
    InstanceStateChanged,
    InstanceStopRequested,
    projected_cost,
)
from compgrid_inventory.adapters import claims, workers
from compgrid_inventory.adapters.repository import (
    get_budget,
    get_instance,
    project_usage,
    resources,
    unconfirmed_holds,
)
from compgrid_inventory.adapters.tables import datacenter, hold, image, instance, instance_type
from compgrid_inventory.domain.admission import (
    Budget,
    Limits,
    Refused,
    Size,
    check_budget,
    check_quota,
)
from compgrid_inventory.domain.lifecycle import LIVE
from compgrid_inventory.domain.placement import Constraints, Demand, NoPlacement, Strategy
from compgrid_inventory.use_cases.deps import Deps
from compgrid_runtime.uow import UnitOfWork

S = InstanceState
_UNEXPLAINED = frozenset({S.REQUESTED, S.SCHEDULED, S.STARTING, S.RUNNING})
"""States an instance is in because it was asked to run: no earlier reason applies."""


async def transition(
    uow: UnitOfWork,
    row: Any,
    state: S,
    *,
    reason_code: str | None = None,
    reason: str | None = None,
    **values: Any,
) -> Any:
    """Write the new state (and other columns), bump the version, publish the change.

    The reason says why the instance is where it is: a change without one keeps it (a stop
    confirmed by the provisioner still says why it was stopped), except on the way back up.
    """
    if state in (S.FAILED, S.REJECTED) and not reason:
        raise ValueError(f"{state.value} needs a reason")
    changes: dict[str, Any] = {"state": state.value, "updated_at": func.now(), **values}
    if reason is not None:
        changes.update(reason_code=reason_code, reason=reason)
    elif state in _UNEXPLAINED:
        changes.update(reason_code=None, reason=None)
    await uow.session.execute(
        update(instance)
        .where(instance.c.id == row.id)
        .values(**changes, version=instance.c.version + 1)
    )
    if state not in LIVE:
        await claims.release(uow.session, row.id)
    if state not in LIVE or state is S.STOPPED:  # a stopped instance no longer draws money
        await release_hold(uow, row.id)
    new = await get_instance(uow.session, row.id)
    uow.emit(
        InstanceStateChanged(
            instance_id=row.id,
            version=new.version,
            project_id=row.project_id,
            state=state,
            reason=new.reason or "",
            reason_code=new.reason_code,
        )
    )
    if state is S.REJECTED:
        uow.emit(
            InstanceRejected(
                instance_id=row.id,
                version=new.version,
                project_id=row.project_id,
                reason_code=reason_code or "rejected",
                reason=reason or "",
            )
        )
    return new


async def release_hold(uow: UnitOfWork, instance_id: Any) -> None:
    """Drop the admission hold of an instance that no longer runs (idempotent)."""
    await uow.session.execute(delete(hold).where(hold.c.instance_id == instance_id))
    await uow.session.execute(
        update(instance)
        .where(instance.c.id == instance_id)
        .values(hold_amount=None, hold_placed_at=None, hold_until=None)
    )


def limits(deps: Deps, project_row: Any) -> Limits:
    """A project's quota, each missing limit taken from the platform default."""
    s = deps.settings

    def pick(own: int | None, default: int | None) -> int | None:
        return default if own is None else own

    return Limits(
        instances=pick(project_row.max_instances, s.default_max_instances),
        vcpus=pick(project_row.max_vcpus, s.default_max_vcpus),
        memory_mib=pick(project_row.max_memory_mib, s.default_max_memory_mib),
        gpus=pick(project_row.max_gpus, s.default_max_gpus),
    )


def size_of(row: Any) -> Size:
    """What one instance takes of a quota."""
    return Size(1, row.vcpus, row.memory_mib, sum(row.gpus.values()))


def demand_of(row: Any) -> Demand:
    """What one instance needs of a host."""
    return Demand(row.vcpus, row.memory_mib, row.disk_gib, dict(row.gpus))


async def check_and_hold(
    deps: Deps, uow: UnitOfWork, row: Any, now: datetime, code: Any | None = None
) -> Decimal:
    """Check the budget code (``code``: its row, when the caller has just read it) can pay for
    the projected cost, hold that amount and return it."""
    if code is None:
        code = await get_budget(uow.session, row.budget_code_id, row.project_id)
    horizon = timedelta(hours=deps.settings.admission_horizon_hours)
    cost = projected_cost(row.hourly_price, horizon, now, row.lease_ends_at)
    until = now + horizon
    if row.lease_ends_at is not None:
        until = max(now, min(until, row.lease_ends_at))
    view = Budget(
        code=code.code,
        currency=code.currency,
        valid_from=code.valid_from,
        valid_to=code.valid_to,
        status=code.status,
        billing_state=code.billing_state,
        available=code.available,
        unconfirmed_holds=await unconfirmed_holds(uow.session, code.id),
    )
    check_budget(view, now.date(), Money(amount=cost, currency=row.currency))
    held = pg_insert(hold).values(instance_id=row.id, budget_code_id=code.id, amount=cost)
    await uow.session.execute(  # an instance holds once: a new hold replaces its old one
        held.on_conflict_do_update(
            index_elements=[hold.c.instance_id],
            set_={"budget_code_id": held.excluded.budget_code_id, "amount": held.excluded.amount},
        )
    )
    await uow.session.execute(
        update(instance)
        .where(instance.c.id == row.id)
        .values(hold_amount=cost, hold_placed_at=now, hold_until=until)
    )
    return cost


async def admit(
    deps: Deps,
    uow: UnitOfWork,
    row: Any,
    project_row: Any,
    *,
    code: Any | None = None,
    picture: Any | None = None,
    placement: str | None = None,
) -> Any:
    """Run admission for a request (its project row is locked): quota, budget, then placement.
    ``code``, ``picture`` and ``placement`` are the budget code's and image's rows and the
    datacenter's strategy when the caller has just read them.

    Accepted: ``requested`` (``InstanceRequested``, for billing's hold), then placed on a host
    and ``scheduled`` (the command to the datacenter's provisioner). Refused: ``rejected`` with
    the reason; nothing is held or claimed then.
    """
    now = utc_now()
    try:
        quota = limits(deps, project_row)
        if quota != Limits():  # a project without any limit has nothing to count
            used = await project_usage(uow.session, row.project_id, excluding=row.id)
            check_quota(used, quota, size_of(row))
        held = await check_and_hold(deps, uow, row, now, code)
    except Refused as refused:
        return await transition(
            uow, row, S.REJECTED, reason_code=refused.code, reason=refused.message
        )
    if row.state != S.REQUESTED:
        row = await transition(uow, row, S.REQUESTED)
    uow.emit(
        InstanceRequested(
            instance_id=row.id,
            version=row.version,
            name=row.name,
            project_id=row.project_id,
            budget_code_id=row.budget_code_id,
            requested_by=row.requested_by,
            instance_type=row.instance_type,
            image=row.image,
            resources=resources(row),
            hourly_price=row.hourly_price,
            currency=row.currency,
            lease_ends_at=row.lease_ends_at,
            price_tier_id=await uow.session.scalar(
                select(instance_type.c.price_tier_id).where(
                    instance_type.c.id == row.instance_type_id
                )
            ),
            held_amount=held,
        )
    )
    return await schedule(uow, row, picture=picture, placement=placement)


async def schedule(
    uow: UnitOfWork, row: Any, *, picture: Any | None = None, placement: str | None = None
) -> Any:
    """Claim a host for the instance and tell that datacenter's provisioner to create it
    (``picture``, ``placement``: the image row and the datacenter's strategy, when known)."""
    strategy = Strategy.PACK
    if row.requested_datacenter is not None:
        if placement is None:
            placement = await uow.session.scalar(
                datacenter.select()
                .with_only_columns(datacenter.c.placement)
                .where(datacenter.c.name == row.requested_datacenter)
            )
        strategy = Strategy(placement or "pack")
    constraints = Constraints(datacenter=row.requested_datacenter, labels=dict(row.labels))
    try:
        placed = await claims.place(uow.session, row.id, demand_of(row), constraints, strategy)
    except NoPlacement as none:
        return await transition(uow, row, S.REJECTED, reason_code=none.code, reason=none.reason)
    row = await transition(uow, row, S.SCHEDULED, host_id=placed.id, commanded_at=func.now())
    if picture is None or picture.id != row.image_id:
        picture = (
            await uow.session.execute(image.select().where(image.c.id == row.image_id))
        ).one()
    uow.emit(
        InstanceScheduled(
            instance_id=row.id,
            version=row.version,
            datacenter=placed.datacenter,
            host=placed.name,
            host_uri=row.host_uri,
            name=row.name,
            project_id=row.project_id,
            budget_code_id=row.budget_code_id,
            resources=resources(row),
            image=row.image,
            image_source=picture.source,
            image_format=picture.format,
            default_user=picture.default_user,
            ssh_public_key=row.ssh_public_key,
        )
    )
    return row


async def request_stop(uow: UnitOfWork, row: Any, reason: str, *, reason_code: str) -> Any:
    """Ask the provisioner to stop a running (or starting) instance, saying why on it."""
    row = await transition(
        uow, row, S.STOPPING, reason_code=reason_code, reason=reason, commanded_at=func.now()
    )
    uow.emit(
        InstanceStopRequested(
            instance_id=row.id,
            version=row.version,
            datacenter=row.datacenter_name,
            host=row.host_name,
            reason=reason,
        )
    )
    return row


async def request_delete(uow: UnitOfWork, row: Any, reason: str = "") -> Any:
    """Delete an instance: through its provisioner when it has a host, else at once.

    An instance no hypervisor ever reported on, in a datacenter no worker serves, is deleted at
    once too; the command still goes out, for a worker that comes back holding a part of it.
    """
    if row.host_id is None:
        return await transition(uow, row, S.DELETED, reason=reason or None)
    if row.observed_at is None and not await workers.has_live_worker(
        uow.session, row.datacenter_name
    ):
        why = reason or "it never reached a hypervisor"
        row = await transition(uow, row, S.DELETED, reason=why, commanded_at=func.now())
    else:
        row = await transition(uow, row, S.DELETING, commanded_at=func.now())
    uow.emit(
        InstanceDeleteRequested(
            instance_id=row.id,
            version=row.version,
            datacenter=row.datacenter_name,
            host=row.host_name,
        )
    )
    return row
