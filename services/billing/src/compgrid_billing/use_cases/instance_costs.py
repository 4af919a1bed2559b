"""What one instance has cost so far: its priced charges from the ledger (the same sums
``costs`` answers) and the estimate for its hours not priced yet (``domain.estimate``).

Who may ask: whoever requested the instance (while still in its project), the project's PI,
admins and finance. Billing learns of an instance from the inventory's events a moment after
the inventory shows it, so an instance billing does not know yet is waited for, briefly,
before it is called unknown.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import and_, exists, select

from compgrid_billing.adapters.tables import charge, instance, instance_run, parked, usage
from compgrid_billing.domain.estimate import MICRO, estimate, unpriced_seconds
from compgrid_billing.use_cases.deps import Deps
from compgrid_billing.use_cases.queries import ledger_sums, require_cost_reader
from compgrid_events import billing_api as api
from compgrid_events.base import Money, utc_now
from compgrid_runtime.errors import NotFound
from compgrid_runtime.rpc import Caller

POLL_S = 0.1


async def _instance(deps: Deps, instance_id: UUID) -> Any:
    """The instance's project, requester and price; None when billing has not heard of it
    within ``projection_wait_s``."""
    query = select(
        instance.c.project_id,
        instance.c.requested_by,
        instance.c.hourly_price,
        instance.c.currency,
    ).where(instance.c.id == instance_id)
    deadline = time.monotonic() + deps.settings.projection_wait_s
    while True:
        async with deps.uow() as uow:
            row = (await uow.session.execute(query)).first()
        if row is not None or time.monotonic() >= deadline:
            return row
        await asyncio.sleep(POLL_S)


async def _unpriced_seconds(session: Any, instance_id: UUID) -> Decimal:
    """Running time in the instance's hours that have no priced usage from metering yet (a
    stopped disk's own hours, revision 0, say nothing of running time)."""
    runs = (
        await session.execute(
            select(instance_run.c.started_at, instance_run.c.stopped_at).where(
                instance_run.c.instance_id == instance_id
            )
        )
    ).all()
    if not runs:
        return Decimal(0)
    waiting = exists().where(
        and_(parked.c.instance_id == usage.c.instance_id, parked.c.hour_start == usage.c.hour_start)
    )
    priced = set(
        await session.scalars(
            select(usage.c.hour_start).where(
                usage.c.instance_id == instance_id, usage.c.revision > 0, ~waiting
            )
        )
    )
    return unpriced_seconds([(r.started_at, r.stopped_at) for r in runs], priced, utc_now())


async def get_instance_costs(
    deps: Deps, caller: Caller, body: api.InstanceCostsQuery
) -> api.InstanceCosts:
    """Charges priced so far, and the estimate for the running time not priced yet."""
    principal = caller.require()
    row = await _instance(deps, body.instance_id)
    if row is None:
        raise NotFound("no such instance", field="instance_id")
    require_cost_reader(principal, row.project_id, row.requested_by, "no such instance")
    async with deps.uow() as uow:
        currency, charged, resources = await ledger_sums(
            uow.session, charge.c.instance_id == body.instance_id
        )
        seconds = await _unpriced_seconds(uow.session, body.instance_id)
    price = Decimal(row.hourly_price)
    estimated = estimate(seconds, price)
    return api.InstanceCosts(
        instance_id=body.instance_id,
        project_id=row.project_id,
        currency=currency or row.currency,
        hourly_price=Money(amount=price, currency=row.currency),
        charged=charged,
        resources=resources,
        unrated_running_seconds=seconds.quantize(MICRO),
        estimated_unrated=estimated,
        estimated_total=charged + estimated,
    )
