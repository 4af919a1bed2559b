"""What billing keeps of other services' events: people, projects, budget codes, instances
and their holds, price tiers, and every hour of usage.

Every handler that may change charges or budgets takes the ledger lock first, so that all
such transactions lock in one order (ledger, then budget rows) and never deadlock.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from compgrid_billing.adapters.locks import lock_ledger
from compgrid_billing.adapters.tables import (
    account,
    budget,
    instance,
    instance_run,
    price_rate,
    project,
    usage,
)
from compgrid_billing.use_cases import budgets, rating
from compgrid_billing.use_cases.deps import Deps
from compgrid_events.auth import (
    BudgetCodeCreated,
    BudgetCodeUpdated,
    ProjectCreated,
    UserRegistered,
)
from compgrid_events.base import utc_now
from compgrid_events.inventory import (
    InstanceRejected,
    InstanceRequested,
    InstanceState,
    InstanceStateChanged,
    PriceTierChanged,
    projected_cost,
)
from compgrid_events.metering import UsageRecorded
from compgrid_runtime.logs import get_logger
from compgrid_runtime.uow import UnitOfWork

log = get_logger(__name__)

RELEASED = frozenset(
    {
        InstanceState.STOPPING,
        InstanceState.STOPPED,
        InstanceState.DELETING,
        InstanceState.DELETED,
        InstanceState.FAILED,
        InstanceState.REJECTED,
    }
)
"""States in which an instance holds nothing (it is not running and will not be)."""


# auth ------------------------------------------------------------------------------------


async def on_user_registered(deps: Deps, event: UserRegistered, uow: UnitOfWork) -> None:
    """Keep a person's name and address for invoices."""
    values = {"email": event.email, "display_name": event.display_name}
    statement = pg_insert(account).values(id=event.user_id, **values)
    await uow.session.execute(
        statement.on_conflict_do_update(index_elements=[account.c.id], set_=values)
    )


async def on_project_created(deps: Deps, event: ProjectCreated, uow: UnitOfWork) -> None:
    """Keep a project's name and PI."""
    values = {"name": event.name, "pi_user_id": event.pi_user_id}
    statement = pg_insert(project).values(id=event.project_id, **values)
    await uow.session.execute(
        statement.on_conflict_do_update(index_elements=[project.c.id], set_=values)
    )


async def on_budget_code(
    deps: Deps, event: BudgetCodeCreated | BudgetCodeUpdated, uow: UnitOfWork
) -> None:
    """Keep a code's funding, dates, thresholds and status (newer versions win), then rate
    what waited for it and recompute it."""
    await lock_ledger(uow)
    values = {
        "project_id": event.project_id,
        "code": event.code,
        "name": event.name,
        "currency": event.funding.currency,
        "funding": event.funding.amount,
        "valid_from": event.valid_from,
        "valid_to": event.valid_to,
        "thresholds": [str(t) for t in event.soft_thresholds_percent],
        "hard_limit_behaviour": event.hard_limit_behaviour.value,
        "status": event.status.value,
        "auth_version": event.version,
    }
    statement = pg_insert(budget).values(id=event.budget_code_id, **values)
    await uow.session.execute(
        statement.on_conflict_do_update(
            index_elements=[budget.c.id],
            set_=values,
            where=budget.c.auth_version < statement.excluded.auth_version,
        )
    )
    await rating.rate_budget(uow, event.budget_code_id)
    await budgets.refresh(uow, deps.settings, [event.budget_code_id])


# inventory -------------------------------------------------------------------------------


async def on_instance_requested(deps: Deps, event: InstanceRequested, uow: UnitOfWork) -> None:
    """Know what prices the instance, and hold its projected cost on its budget code."""
    await lock_ledger(uow)
    hold = event.held_amount
    if hold is None:
        horizon = timedelta(hours=deps.settings.admission_horizon_hours)
        hold = projected_cost(event.hourly_price, horizon, event.occurred_at, event.lease_ends_at)
    statement = pg_insert(instance).values(
        id=event.instance_id,
        project_id=event.project_id,
        budget_code_id=event.budget_code_id,
        name=event.name,
        requested_by=event.requested_by,
        instance_type=event.instance_type,
        price_tier_id=event.price_tier_id,
        disk_gib=event.resources.disk_gib,
        hourly_price=event.hourly_price,
        currency=event.currency,
        lease_ends_at=event.lease_ends_at,
        state=InstanceState.REQUESTED.value,
        version=event.version,
        hold_amount=hold,
        hold_active=True,
    )
    inserted = (
        await uow.session.execute(statement.on_conflict_do_nothing().returning(instance.c.id))
    ).first()
    if inserted is None:
        return  # a repeated request: the instance and its hold are there already
    await rating.rate_instance(uow, event.instance_id)  # its usage may have waited for it
    await budgets.refresh(uow, deps.settings, [event.budget_code_id])


async def _follow(deps: Deps, uow: UnitOfWork, event: Any, state: InstanceState) -> None:
    """Apply a lifecycle report: the disk's life (from any report, whatever its order), and
    from newer ones the state and the hold — released when the instance stops running, placed
    again when a stopped instance starts."""
    row = (
        await uow.session.execute(
            select(instance).where(instance.c.id == event.instance_id).with_for_update()
        )
    ).first()
    if row is None:
        log.info("state of an instance billing does not know", instance=str(event.instance_id))
        return
    values: dict[str, Any] = _disk_life(row, state, event.occurred_at)
    if row.version < event.version:
        values |= {"state": state.value, "version": event.version}
        await _run_life(uow, row, state, event.occurred_at)
        if state in RELEASED:
            values["hold_active"] = False
        elif state is InstanceState.STARTING and not row.hold_active:
            horizon = timedelta(hours=deps.settings.admission_horizon_hours)
            values |= {
                "hold_active": True,
                "hold_amount": projected_cost(
                    Decimal(row.hourly_price), horizon, utc_now(), row.lease_ends_at
                ),
                "charged_at_hold_scaled": row.charged_scaled,
            }
    if not values:
        return  # older news
    await uow.session.execute(update(instance).where(instance.c.id == row.id).values(**values))
    if "disk_since" in values or "disk_until" in values:
        await rating.rate_instance(uow, row.id)  # storage follows the disk's life
    elif values.get("hold_active", row.hold_active) == row.hold_active:
        return  # neither charges nor holds changed
    await budgets.refresh(uow, deps.settings, [row.budget_code_id])


async def _run_life(uow: UnitOfWork, row: Any, state: InstanceState, at: datetime) -> None:
    """Keep when the instance ran: a run opens when it is running, closes when it leaves."""
    running = InstanceState.RUNNING.value
    if state.value == running and row.state != running:
        await uow.session.execute(
            pg_insert(instance_run)
            .values(instance_id=row.id, started_at=at)
            .on_conflict_do_nothing()
        )
    elif state.value != running and row.state == running:
        await uow.session.execute(
            update(instance_run)
            .where(instance_run.c.instance_id == row.id, instance_run.c.stopped_at.is_(None))
            .values(stopped_at=func.greatest(instance_run.c.started_at, at))
        )


def _disk_life(row: Any, state: InstanceState, at: datetime) -> dict[str, datetime]:
    """What a state says about the disk: it exists from the first start (the earliest report,
    whatever the order they come in) until deletion."""
    if state is InstanceState.RUNNING and (row.disk_since is None or at < row.disk_since):
        return {"disk_since": at}
    if state is InstanceState.DELETED and row.disk_until is None:
        return {"disk_until": at}
    return {}


async def on_instance_state(deps: Deps, event: InstanceStateChanged, uow: UnitOfWork) -> None:
    """Follow an instance's lifecycle for its hold and its disk."""
    await lock_ledger(uow)
    await _follow(deps, uow, event, event.state)


async def on_instance_rejected(deps: Deps, event: InstanceRejected, uow: UnitOfWork) -> None:
    """A rejected instance holds nothing."""
    await lock_ledger(uow)
    await _follow(deps, uow, event, InstanceState.REJECTED)


async def on_price_tier(deps: Deps, event: PriceTierChanged, uow: UnitOfWork) -> None:
    """Keep a tier's rates from their date on, and re-rate every hour they now price."""
    await lock_ledger(uow)
    values = {
        "tier_name": event.name,
        "currency": event.currency,
        "vcpu_hour": event.vcpu_hour_amount,
        "memory_gib_hour": event.memory_gib_hour_amount,
        "storage_gib_month": event.storage_gib_month_amount,
        "gpu_hour": {k: str(v) for k, v in event.gpu_hour_amounts.items()},
    }
    statement = pg_insert(price_rate).values(
        tier_id=event.price_tier_id, effective_from=event.effective_from, **values
    )
    await uow.session.execute(
        statement.on_conflict_do_update(
            index_elements=[price_rate.c.tier_id, price_rate.c.effective_from], set_=values
        )
    )
    rated = await rating.rate_tier_since(uow, event.price_tier_id, event.effective_from)
    if rated.total:
        log.info(
            "usage re-rated for new rates",
            tier=event.name,
            effective_from=event.effective_from.isoformat(),
            entries=rated.total,
        )
    await budgets.refresh(uow, deps.settings, rated.budget_codes)


# metering --------------------------------------------------------------------------------


async def on_usage(deps: Deps, events: list[UsageRecorded]) -> None:
    """Store a batch of closed hours (the newest revision of each wins), rate them and
    recompute their budget codes, in one transaction."""
    newest: dict[tuple[Any, Any], UsageRecorded] = {}
    for event in events:
        key = (event.instance_id, event.hour_start)
        if key not in newest or newest[key].revision < event.revision:
            newest[key] = event
    rows = [
        {
            "instance_id": e.instance_id,
            "hour_start": e.hour_start,
            "project_id": e.project_id,
            "budget_code_id": e.budget_code_id,
            "revision": e.revision,
            "running_s": e.running_seconds,
            "vcpu_s": e.vcpu_seconds,
            "memory_gib_s": e.memory_gib_seconds,
            "storage_gib_s": e.storage_gib_seconds,
            "gpu_s": {k: str(v) for k, v in e.gpu_seconds.items() if v},
        }
        for e in newest.values()
    ]
    async with deps.uow() as uow:
        await lock_ledger(uow)
        statement = pg_insert(usage).values(rows)
        stored = await uow.session.execute(
            statement.on_conflict_do_update(
                index_elements=[usage.c.instance_id, usage.c.hour_start],
                set_={
                    c: statement.excluded[c]
                    for c in rows[0]
                    if c not in ("instance_id", "hour_start")
                },
                where=usage.c.revision < statement.excluded.revision,
            ).returning(usage.c.instance_id, usage.c.hour_start)
        )
        keys = [(row[0], row[1]) for row in stored]
        rated = await rating.rate_hours(uow, keys)
        await budgets.refresh(uow, deps.settings, rated.budget_codes)
        await uow.commit()
