"""What researchers do with instances: request, start, stop, reboot, delete; PIs approve.

Bad input (unknown type, image, project or budget code, a size no host could ever take, a
taken name, an action the current state does not allow) is refused with an error and changes
nothing. A well-formed request that admission refuses (quota, budget, no capacity now, a PI's
denial) is kept as ``rejected`` with its reason, so the requester can see why.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from compgrid_events import uuid7
from compgrid_events.auth_api import BudgetCodePublic
from compgrid_events.base import Money, utc_now
from compgrid_events.inventory import (
    ApprovalDecided,
    ApprovalRequested,
    InstanceRebootRequested,
    InstanceStartRequested,
    InstanceState,
    InstanceStateChanged,
)
from compgrid_events.inventory_api import (
    Decide,
    Deny,
    InstancePublic,
    InstanceRef,
    ListInstances,
    Page,
    RequestByRequirements,
    RequestInstance,
    SetLease,
)
from compgrid_inventory.adapters import claims
from compgrid_inventory.adapters.repository import (
    find_image,
    find_type,
    get_instance,
    get_project,
    instance_public,
    instance_query,
)
from compgrid_inventory.adapters.tables import (
    LIVE_NAME_WHERE,
    datacenter,
    image,
    instance,
    instance_type,
    price_tier,
)
from compgrid_inventory.domain.admission import Policy, Refused, approval_needed
from compgrid_inventory.domain.lifecycle import Action, after_action
from compgrid_inventory.domain.placement import Constraints, Demand, NoPlacement, Strategy
from compgrid_inventory.domain.pricing import hourly_price
from compgrid_inventory.use_cases.budgets import budget_for_request, read_through
from compgrid_inventory.use_cases.catalog import current_price, current_rates, datacenter_by_name
from compgrid_inventory.use_cases.deps import Deps
from compgrid_inventory.use_cases.lifecycle import (
    admit,
    check_and_hold,
    request_delete,
    request_stop,
    transition,
)
from compgrid_runtime.access import (
    require_project_manager,
    require_project_member,
    require_project_reader,
)
from compgrid_runtime.errors import Conflict, Invalid, NotFound
from compgrid_runtime.rpc import Caller
from compgrid_runtime.tokens import Principal
from compgrid_runtime.uow import UnitOfWork

S = InstanceState


def _member(caller: Caller, project_id: UUID) -> Principal:
    principal = caller.require()
    require_project_member(principal, principal.project_role(project_id))
    return principal


def _lease_end(
    wanted: datetime | None, default_hours: int | None, now: datetime
) -> datetime | None:
    if wanted is not None:
        if wanted <= now:
            raise Invalid("lease_ends_at: must be in the future", field="lease_ends_at")
        return wanted
    return None if default_hours is None else now + timedelta(hours=default_hours)


async def _feasible(uow: UnitOfWork, demand: Demand, constraints: Constraints) -> None:
    """Refuse, as bad input, a request no host of the cluster could ever take."""
    try:
        await claims.candidates(uow.session, demand, constraints, Strategy.PACK)
    except NoPlacement as none:
        if none.code not in ("no_capacity", "no_provisioner"):  # only "not now"
            field = "datacenter" if none.code == "no_matching_host" else "instance_type"
            raise Invalid(none.reason, code=none.code, field=field) from None


async def request_instance(deps: Deps, caller: Caller, body: RequestInstance) -> InstancePublic:
    """Ask for an instance of a type; it is admitted, waits for approval, or is rejected."""
    principal = _member(caller, body.project_id)
    fetched = await read_through(deps, caller, body.budget_code_id, body.project_id)
    async with deps.uow() as uow:
        kind = await find_type(uow.session, body.instance_type)
        row = await _request(deps, uow, principal, body, kind, fetched)
        await uow.commit()
    return instance_public(row)


async def _request(
    deps: Deps,
    uow: UnitOfWork,
    principal: Principal,
    body: RequestInstance,
    kind: Any,
    fetched: BudgetCodePublic | None,
) -> Any:
    """Validate, record and admit one request (shared by both ways of asking)."""
    session = uow.session
    now = utc_now()
    # Validation and the new row need no lock; admission (quota, budget) takes the project's.
    project_row = await get_project(session, body.project_id)
    code = await budget_for_request(session, body.budget_code_id, body.project_id, fetched)
    picture = await find_image(session, body.image)
    if kind.system_types and picture.system_type not in kind.system_types:
        raise Invalid(
            f"image {picture.name} is {picture.system_type}; type {kind.name} takes"
            f" {', '.join(kind.system_types)}",
            code="image_not_allowed",
            field="image",
        )
    placement = None
    if body.datacenter is not None:
        placement = (await datacenter_by_name(session, body.datacenter)).placement
    labels = dict(body.labels)
    demand = Demand(kind.vcpus, kind.memory_mib, kind.disk_gib, dict(kind.gpus))
    await _feasible(uow, demand, Constraints(body.datacenter, labels))
    rates = await current_rates(session, kind.price_tier_id)
    if rates is None:
        raise Conflict(f"type {kind.name} has no price in effect yet", code="no_price")
    price = hourly_price(
        rates, vcpus=kind.vcpus, memory_mib=kind.memory_mib, disk_gib=kind.disk_gib, gpus=kind.gpus
    )
    currency = kind.currency
    policy = Policy(
        approval_above=None
        if project_row.approval_above_amount is None
        else Money(
            amount=project_row.approval_above_amount,
            currency=project_row.approval_above_currency,
        ),
        approval_for_gpus=project_row.approval_for_gpus,
    )
    why = None
    if not principal.has_role("admin") and principal.project_role(body.project_id) != "pi":
        why = approval_needed(policy, Money(amount=price, currency=currency), kind.gpus)
    instance_id = uuid7()
    values = {
        "id": instance_id,
        "name": body.name,
        "project_id": body.project_id,
        "budget_code_id": code.id,
        "requested_by": principal.user_id,
        "instance_type_id": kind.id,
        "instance_type": kind.name,
        "image_id": picture.id,
        "image": picture.name,
        "vcpus": kind.vcpus,
        "memory_mib": kind.memory_mib,
        "disk_gib": kind.disk_gib,
        "gpus": kind.gpus,
        "hourly_price": price,
        "currency": currency,
        "requested_datacenter": body.datacenter,
        "labels": labels,
        "ssh_public_key": body.ssh_public_key,
        "state": (S.PENDING_APPROVAL if why else S.REQUESTED).value,
        "version": 1,
        "lease_ends_at": _lease_end(body.lease_ends_at, project_row.default_lease_hours, now),
    }
    # The partial unique index on live names decides, also between concurrent requests.
    created = await session.scalar(
        pg_insert(instance)
        .values(**values)
        .on_conflict_do_nothing(
            index_elements=[instance.c.project_id, instance.c.name],
            index_where=text(LIVE_NAME_WHERE),
        )
        .returning(instance.c.id)
    )
    if created is None:
        raise Conflict(
            f"the project has an instance named {body.name}", code="name_taken", field="name"
        )
    row = await get_instance(session, instance_id)
    uow.emit(
        InstanceStateChanged(
            instance_id=row.id, version=1, project_id=row.project_id, state=S(row.state)
        )
    )
    if why:
        uow.emit(
            ApprovalRequested(
                instance_id=row.id,
                version=1,
                name=row.name,
                project_id=row.project_id,
                requested_by=row.requested_by,
                instance_type=row.instance_type,
                hourly_price=price,
                currency=currency,
                why=why,
            )
        )
        return row
    # Held until commit, so admissions of one project are counted one after another; taken as
    # late as possible, so they queue for as short a time as possible.
    project_row = await get_project(session, body.project_id, lock=True)
    return await admit(deps, uow, row, project_row, code=code, picture=picture, placement=placement)


async def request_by_requirements(
    deps: Deps, caller: Caller, body: RequestByRequirements
) -> InstancePublic:
    """Ask for the cheapest instance type that meets the requirements and fits somewhere now."""
    principal = _member(caller, body.project_id)
    wanted = body.requirements
    fetched = await read_through(deps, caller, body.budget_code_id, body.project_id)
    async with deps.uow() as uow:
        session = uow.session
        if body.image is None:
            picture = (
                await session.execute(
                    select(image)
                    .where(image.c.system_type == wanted.system_type)
                    .order_by(image.c.created_at.desc())
                    .limit(1)
                )
            ).first()
            if picture is None:
                raise NotFound(
                    f"no image of system type {wanted.system_type}",
                    code="unknown_system_type",
                    field="requirements.system_type",
                )
        else:
            picture = await find_image(session, body.image)
        code = await budget_for_request(session, body.budget_code_id, body.project_id, fetched)
        kind = await _cheapest(uow, wanted, body.datacenter, code.currency)
        request = RequestInstance(
            name=body.name,
            project_id=body.project_id,
            budget_code_id=str(code.id),
            instance_type=str(kind.id),
            image=str(picture.id),
            datacenter=body.datacenter,
            ssh_public_key=body.ssh_public_key,
            lease_ends_at=body.lease_ends_at,
        )
        row = await _request(deps, uow, principal, request, kind, None)  # code saved above
        await uow.commit()
    return instance_public(row)


async def _cheapest(uow: UnitOfWork, wanted: Any, datacenter: str | None, currency: str) -> Any:
    """The cheapest type meeting the requirements, priced in the budget code's currency, that
    some host can take now. GPU types are only candidates when GPUs are asked for."""
    session = uow.session
    rows = (
        await session.execute(
            select(instance_type, price_tier.c.currency)
            .join(price_tier, price_tier.c.id == instance_type.c.price_tier_id)
            .where(
                price_tier.c.currency == currency,
                instance_type.c.retired_at.is_(None),
                instance_type.c.vcpus >= wanted.min_vcpus,
                instance_type.c.memory_mib >= int(wanted.min_memory_gib * 1024),
                instance_type.c.disk_gib >= wanted.min_disk_gib,
            )
        )
    ).all()
    matching = [
        r
        for r in rows
        if (not r.system_types or wanted.system_type in r.system_types)
        and all(r.gpus.get(m, 0) >= n for m, n in wanted.gpus.items())
        and (bool(wanted.gpus) or not r.gpus)
    ]
    if not matching:
        raise NotFound(
            f"no instance type has at least {wanted.min_vcpus} vCPU, {wanted.min_memory_gib} GiB"
            f" and {wanted.min_disk_gib} GiB of disk for {wanted.system_type}"
            + (f" with GPUs {dict(wanted.gpus)}" if wanted.gpus else "")
            + f" priced in {currency}",
            code="no_matching_type",
            field="requirements",
        )
    priced = []
    for row in matching:
        price = await current_price(session, row)
        if price is not None:
            priced.append((price, row.name, row))
    priced.sort(key=lambda p: (p[0], p[1]))
    affordable = [
        p for p in priced if wanted.max_hourly_price is None or p[0] <= wanted.max_hourly_price
    ]
    if not affordable:
        cheapest = f"; the cheapest costs {priced[0][0]:.4f} per hour" if priced else ""
        raise Conflict(
            f"no matching type costs at most {wanted.max_hourly_price} per hour{cheapest}",
            code="over_price",
            field="requirements.max_hourly_price",
        )
    for _, _, row in affordable:
        demand = Demand(row.vcpus, row.memory_mib, row.disk_gib, dict(row.gpus))
        try:
            await claims.candidates(session, demand, Constraints(datacenter), Strategy.PACK)
        except NoPlacement:
            continue
        return row
    raise Conflict(
        f"none of the {len(affordable)} matching types can be placed now: no host has room",
        code="no_capacity",
        field="requirements",
    )


async def get_instance_detail(deps: Deps, caller: Caller, body: InstanceRef) -> InstancePublic:
    """One instance, for its project's people (and admins and finance)."""
    principal = caller.require()
    async with deps.uow() as uow:
        row = await get_instance(uow.session, body.instance_id)
    require_project_reader(principal, principal.project_role(row.project_id))
    return instance_public(row)


async def list_instances(deps: Deps, caller: Caller, body: ListInstances) -> Page[InstancePublic]:
    """Newest first (or oldest first); members see their projects' instances only."""
    principal = caller.require()
    newest = body.sort.startswith("-")
    order = instance.c.id.desc() if newest else instance.c.id.asc()
    query = instance_query().order_by(order).limit(body.limit + 1)
    if not principal.has_role("admin", "finance"):
        query = query.where(instance.c.project_id.in_(list(principal.projects)))
    if body.project_id is not None:
        require_project_reader(principal, principal.project_role(body.project_id))
        query = query.where(instance.c.project_id == body.project_id)
    if body.state is not None:
        query = query.where(instance.c.state == body.state.value)
    if body.host_id is not None:
        query = query.where(instance.c.host_id == body.host_id)
    if body.name:
        pattern = body.name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(instance.c.name.ilike(f"%{pattern}%", escape="\\"))
    if body.mine:
        query = query.where(instance.c.requested_by == principal.user_id)
    if body.after is not None:
        try:
            cursor = UUID(body.after)
            query = query.where(instance.c.id < cursor if newest else instance.c.id > cursor)
        except ValueError:
            raise Invalid("after: not a cursor this list gave out", field="after") from None
    async with deps.uow() as uow:
        if body.datacenter is not None:
            query = query.where(datacenter.c.name == body.datacenter)
        rows = (await uow.session.execute(query)).all()
    items = [instance_public(r) for r in rows[: body.limit]]
    more = len(rows) > body.limit
    return Page(items=items, next_cursor=str(items[-1].id) if more else None)


async def act(deps: Deps, caller: Caller, body: InstanceRef, *, action: Action) -> InstancePublic:
    """Start, stop, reboot or delete an instance, when its state allows it."""
    principal = caller.require()
    async with deps.uow() as uow:
        row = await get_instance(uow.session, body.instance_id)
        require_project_member(principal, principal.project_role(row.project_id))
        if action is Action.START:
            # A start places a budget hold: like a request, it takes the project's lock first
            # (always project, then instance), so concurrent starts cannot overspend a code.
            await get_project(uow.session, row.project_id, lock=True)
        row = await get_instance(uow.session, body.instance_id, lock=True)
        after_action(InstanceState(row.state), action)
        if action is Action.START:
            try:
                await check_and_hold(deps, uow, row, utc_now())
            except Refused as refused:
                raise Conflict(refused.message, code=refused.code) from None
            row = await transition(uow, row, S.STARTING, commanded_at=func.now())
            uow.emit(
                InstanceStartRequested(
                    instance_id=row.id,
                    version=row.version,
                    datacenter=row.datacenter_name,
                    host=row.host_name,
                )
            )
        elif action is Action.STOP:
            row = await request_stop(uow, row, "stopped by a user", reason_code="stopped_by_user")
        elif action is Action.REBOOT:
            await uow.session.execute(
                update(instance).where(instance.c.id == row.id).values(commanded_at=func.now())
            )
            uow.emit(
                InstanceRebootRequested(
                    instance_id=row.id,
                    version=row.version,
                    datacenter=row.datacenter_name,
                    host=row.host_name,
                )
            )
        else:
            row = await request_delete(uow, row)
        await uow.commit()
    return instance_public(row)


async def approve(deps: Deps, caller: Caller, body: Decide) -> InstancePublic:
    """A PI lets a waiting request through admission (which may still refuse it)."""
    return await _decide(deps, caller, body.instance_id, approved=True, reason=body.reason)


async def deny(deps: Deps, caller: Caller, body: Deny) -> InstancePublic:
    """A PI refuses a waiting request, with the reason the requester will read."""
    return await _decide(deps, caller, body.instance_id, approved=False, reason=body.reason)


async def _decide(
    deps: Deps, caller: Caller, instance_id: UUID, *, approved: bool, reason: str
) -> InstancePublic:
    principal = caller.require()
    async with deps.uow() as uow:
        row = await get_instance(uow.session, instance_id)
        require_project_manager(principal, principal.project_role(row.project_id))
        project_row = await get_project(uow.session, row.project_id, lock=True)
        row = await get_instance(uow.session, instance_id, lock=True)
        after_action(InstanceState(row.state), Action.APPROVE if approved else Action.DENY)
        uow.emit(
            ApprovalDecided(
                instance_id=row.id,
                version=row.version + 1,
                project_id=row.project_id,
                requested_by=row.requested_by,
                decided_by=principal.user_id,
                approved=approved,
                reason=reason,
            )
        )
        if approved:
            row = await transition(uow, row, S.REQUESTED)
            row = await admit(deps, uow, row, project_row)
        else:
            row = await transition(
                uow, row, S.REJECTED, reason_code="denied", reason=f"denied by the PI: {reason}"
            )
        await uow.commit()
    return instance_public(row)


async def set_lease(deps: Deps, caller: Caller, body: SetLease) -> InstancePublic:
    """Move (or drop) an instance's lease end; the warning is sent again for the new end."""
    principal = caller.require()
    lease_ends_at = _lease_end(body.lease_ends_at, None, utc_now())
    async with deps.uow() as uow:
        row = await get_instance(uow.session, body.instance_id, lock=True)
        require_project_member(principal, principal.project_role(row.project_id))
        if InstanceState(row.state) in (S.DELETING, S.DELETED, S.REJECTED):
            raise Conflict(f"the instance is {row.state}", code="illegal_transition")
        await uow.session.execute(
            update(instance)
            .where(instance.c.id == row.id)
            .values(
                lease_ends_at=lease_ends_at,
                lease_warned_at=None,
                lease_stopped_at=None,
                updated_at=func.now(),
            )
        )
        row = await get_instance(uow.session, row.id)
        await uow.commit()
    return instance_public(row)
