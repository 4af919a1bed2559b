"""What the inventory learns from others' events, each applied once (the inbox) in order.

- From auth: projects (with their approval and lease policy at creation) and budget codes
  (validity, status), kept as local projections; a budget code's older version never
  overwrites a newer one.
- From billing: what each budget code has left, which admission holds billing counts already
  (ours are then dropped), and exhaustion, which stops the code's instances or blocks new ones.
- From the provisioners: what happened to instances and hosts. A report moves an instance only
  where that is a step forward and only when it is not older than what was applied or commanded
  last; anything else is a late or repeated report and is ignored.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from compgrid_events.auth import BudgetCodeCreated, BudgetCodeUpdated, ProjectCreated
from compgrid_events.billing import BudgetExhausted, BudgetState, BudgetStatusChanged
from compgrid_events.inventory import HostState, InstanceState
from compgrid_events.provisioner import (
    HostUnreachable,
    InstanceDeleted,
    InstanceFailed,
    InstanceStarted,
    InstanceStopped,
)
from compgrid_inventory.adapters.repository import get_instance, instance_query, save_budget
from compgrid_inventory.adapters.tables import budget, datacenter, hold, host, instance, project
from compgrid_inventory.domain.lifecycle import UP, Report, after_report
from compgrid_inventory.use_cases.catalog import set_host
from compgrid_inventory.use_cases.lifecycle import request_stop, transition
from compgrid_runtime.logs import get_logger
from compgrid_runtime.retry import PermanentError
from compgrid_runtime.uow import UnitOfWork

log = get_logger(__name__)
S = InstanceState


# Auth -------------------------------------------------------------------------------------


async def on_project_created(event: ProjectCreated, uow: UnitOfWork) -> None:
    """Know the project, with the approval and lease policy it was created with."""
    limit = event.requires_approval_above
    await uow.session.execute(
        pg_insert(project)
        .values(
            id=event.project_id,
            name=event.name,
            pi_user_id=event.pi_user_id,
            approval_above_amount=None if limit is None else limit.amount,
            approval_above_currency=None if limit is None else limit.currency,
            default_lease_hours=event.default_lease_hours,
        )
        .on_conflict_do_nothing()
    )


async def on_budget_code(event: BudgetCodeCreated | BudgetCodeUpdated, uow: UnitOfWork) -> None:
    """Keep a budget code's validity and status (a newer version wins, whatever the order)."""
    values = {
        "project_id": event.project_id,
        "code": event.code,
        "currency": event.funding.currency,
        "valid_from": event.valid_from,
        "valid_to": event.valid_to,
        "status": event.status.value,
        "hard_limit_behaviour": event.hard_limit_behaviour.value,
        "auth_version": event.version,
    }
    await save_budget(uow.session, event.budget_code_id, values)


# Billing ----------------------------------------------------------------------------------


async def on_budget_status(event: BudgetStatusChanged, uow: UnitOfWork) -> None:
    """Take billing's view of what a code has left; drop the holds it now counts itself."""
    known = await uow.session.scalar(select(budget.c.id).where(budget.c.id == event.budget_code_id))
    if known is None:
        # The code's creation (from auth) has not arrived yet: try again later.
        raise RuntimeError(f"budget code {event.budget_code_id} is not known yet")
    await uow.session.execute(
        update(budget)
        .where(budget.c.id == event.budget_code_id, budget.c.billing_version < event.version)
        .values(
            billing_state=event.state.value,
            available=event.available.amount,
            billing_version=event.version,
            billing_updated_at=event.occurred_at,
        )
    )
    if event.held_instance_ids:
        await uow.session.execute(
            delete(hold).where(hold.c.instance_id.in_(list(event.held_instance_ids)))
        )


async def on_budget_exhausted(event: BudgetExhausted, uow: UnitOfWork) -> None:
    """Block new instances on the code; stop its running ones when the code says so.

    An exhaustion older than billing's newest status of the code (funding raised since, say)
    is history and changes nothing.
    """
    newest = await uow.session.scalar(
        select(budget.c.billing_updated_at).where(budget.c.id == event.budget_code_id)
    )
    if newest is not None and event.occurred_at < newest:
        log.info("late budget exhaustion ignored", budget_code=str(event.budget_code_id))
        return
    await uow.session.execute(
        update(budget)
        .where(budget.c.id == event.budget_code_id)
        .values(billing_state=BudgetState.EXHAUSTED.value, billing_updated_at=event.occurred_at)
    )
    if event.behaviour.value != "stop_instances":
        return
    code = await uow.session.scalar(
        select(budget.c.code).where(budget.c.id == event.budget_code_id)
    )
    rows = (
        await uow.session.execute(
            instance_query()
            .where(
                instance.c.budget_code_id == event.budget_code_id,
                instance.c.state.in_([s.value for s in UP]),
            )
            .with_for_update(of=instance)
        )
    ).all()
    for row in rows:
        await request_stop(
            uow,
            row,
            f"budget code {code} is exhausted: its grant ran out",
            reason_code="budget_exhausted",
        )
    log.info(
        "budget exhausted: instances stopped",
        budget_code=str(event.budget_code_id),
        stopped=len(rows),
    )


# Provisioners -----------------------------------------------------------------------------


async def _reported(uow: UnitOfWork, event: Any, report: Report) -> Any | None:
    """The instance a report is about, if the report still says something new about it."""
    try:
        row = await get_instance(uow.session, event.instance_id, lock=True)
    except Exception as exc:
        raise PermanentError(f"report about an unknown instance {event.instance_id}") from exc
    stale_after = row.observed_at
    if report is not Report.DELETED and row.commanded_at is not None:
        stale_after = max(stale_after or row.commanded_at, row.commanded_at)
    if stale_after is not None and event.occurred_at < stale_after:
        log.info("late report ignored", instance=str(row.id), report=report.value)
        return None
    return row


async def _apply(uow: UnitOfWork, event: Any, report: Report, **values: Any) -> None:
    row = await _reported(uow, event, report)
    if row is None:
        return
    target = after_report(S(row.state), report)
    if target is None:
        log.info(
            "report ignored in this state",
            instance=str(row.id),
            state=row.state,
            report=report.value,
        )
        return
    values["observed_at"] = event.occurred_at
    if target.value == row.state:
        await uow.session.execute(update(instance).where(instance.c.id == row.id).values(**values))
        return
    await transition(uow, row, target, **values)


async def on_started(event: InstanceStarted, uow: UnitOfWork) -> None:
    """The domain runs."""
    await _apply(
        uow,
        event,
        Report.STARTED,
        domain_uuid=event.domain_uuid,
        addresses=list(event.addresses),
    )


async def on_stopped(event: InstanceStopped, uow: UnitOfWork) -> None:
    """The domain stopped: it keeps its host, but no longer draws on the budget."""
    await _apply(uow, event, Report.STOPPED)


async def on_failed(event: InstanceFailed, uow: UnitOfWork) -> None:
    """The domain could not be created or died: the claim and hold go back."""
    await _apply(
        uow, event, Report.FAILED, reason_code="provisioning_failed", reason=event.reason[:1000]
    )


async def on_deleted(event: InstanceDeleted, uow: UnitOfWork) -> None:
    """The domain and its volumes are gone."""
    await _apply(uow, event, Report.DELETED)


async def on_host_unreachable(event: HostUnreachable, uow: UnitOfWork) -> None:
    """Mark the host down: it takes no new work until an operator brings it back."""
    row = (
        await uow.session.execute(
            select(host)
            .join(datacenter, datacenter.c.id == host.c.datacenter_id)
            .where(datacenter.c.name == event.datacenter, host.c.name == event.host)
            .with_for_update(of=host)
        )
    ).first()
    if row is None:
        raise PermanentError(f"unknown host {event.datacenter}/{event.host}")
    if row.state != HostState.DOWN.value:
        await set_host(uow, row.id, event.datacenter, state=HostState.DOWN.value)
        log.warning("host marked down", host=event.host, reason=event.reason)
