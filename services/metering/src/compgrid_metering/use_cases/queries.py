"""Live usage for the gateway: an instance's, project's or budget code's hours and their sum.

Hours come from the Redis counters (the live source, current hour included) and, for hours
Redis no longer holds, from the closed rollups in Postgres. After Redis lost its data and until
the counters are rebuilt, an answer says ``complete: false``: its open hours may be missing.
Who may ask: the project's members, admins and finance; to anyone else the owner does not exist.
Metering knows budget codes only by id: one named by its code is looked up in auth on the
caller's behalf, so auth decides which budget codes the caller may see (the same people).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

from sqlalchemy import BigInteger, cast, func, select, true

from compgrid_events.auth_api import BudgetCodePublic
from compgrid_events.base import utc_now
from compgrid_events.metering_api import HourUsage, UsageOf, UsageQuery, UsageReport
from compgrid_metering.adapters.counters import Usage
from compgrid_metering.adapters.tables import rollup
from compgrid_metering.domain.hours import HOUR, hour_of
from compgrid_metering.use_cases.deps import Deps
from compgrid_metering.use_cases.rollups import amounts
from compgrid_runtime.access import require_project_reader
from compgrid_runtime.errors import NotFound
from compgrid_runtime.rpc import Caller, RemoteError

_KIND = {UsageOf.INSTANCE: "i", UsageOf.PROJECT: "p", UsageOf.BUDGET_CODE: "b"}
_COLUMN = {
    UsageOf.INSTANCE: rollup.c.instance_id,
    UsageOf.PROJECT: rollup.c.project_id,
    UsageOf.BUDGET_CODE: rollup.c.budget_code_id,
}


async def _subject(deps: Deps, caller: Caller, body: UsageQuery) -> UUID:
    """The id of whose usage is asked for (a budget code named by its code: the code's id)."""
    if isinstance(body.id, UUID):
        return body.id
    unknown = NotFound("no such budget code", field="id")
    if deps.ask is None or caller.token is None:
        raise unknown
    ref = {"budget_code_id": body.id}
    try:
        found = await deps.ask("auth", "budget_codes.get", ref, token=caller.token)
    except RemoteError as refused:
        if refused.status >= 500:
            raise
        raise unknown from None
    return BudgetCodePublic.model_validate(found).id


async def _project(deps: Deps, of: UsageOf, subject: UUID) -> UUID | None:
    if of is UsageOf.PROJECT:
        return subject
    found = await deps.counters.project_of(_KIND[of], subject)
    if found is not None:
        return found
    async with deps.uow() as uow:  # Redis may have lost it; closed hours still know
        return await uow.session.scalar(
            select(rollup.c.project_id).where(_COLUMN[of] == subject).limit(1)
        )


async def _closed_hours(
    deps: Deps, of: UsageOf, subject: UUID, since: datetime, until: datetime
) -> dict[datetime, Usage]:
    """Rolled-up hours in the window, summed per hour by the database."""
    where = (_COLUMN[of] == subject, rollup.c.hour_start >= since, rollup.c.hour_start < until)
    sums = (
        select(
            rollup.c.hour_start,
            func.sum(rollup.c.running_us),
            func.sum(rollup.c.vcpu_us),
            func.sum(rollup.c.memory_mib_us),
            func.sum(rollup.c.cpu_ns),
        )
        .where(*where)
        .group_by(rollup.c.hour_start)
    )
    gpu = func.jsonb_each_text(rollup.c.gpu_us).table_valued("key", "value").alias("gpu")
    gpus = (
        select(rollup.c.hour_start, gpu.c.key, func.sum(cast(gpu.c.value, BigInteger)))
        .select_from(rollup.join(gpu, true()))
        .where(*where)
        .group_by(rollup.c.hour_start, gpu.c.key)
    )
    async with deps.uow() as uow:
        found = {
            hour: Usage(int(running), int(vcpu), int(memory), int(cpu))
            for hour, running, vcpu, memory, cpu in await uow.session.execute(sums)
        }
        for hour, model, us in await uow.session.execute(gpus):
            found[hour].gpu_us[model] = int(us)
    return found


async def usage_report(deps: Deps, caller: Caller, body: UsageQuery) -> UsageReport:
    """The hours with usage in the window, oldest first, and their sum."""
    principal = caller.require()
    subject = await _subject(deps, caller, body)
    now = utc_now()
    until = body.until or now
    since = body.since or until - timedelta(hours=24)
    project = await _project(deps, body.of, subject)
    if project is None:
        if not principal.has_role("admin", "finance"):
            raise NotFound(f"no usage known for {body.of.value} {body.id}")
    else:
        require_project_reader(principal, principal.project_role(project))
    first = hour_of(since)
    live = await deps.counters.by_hour(_KIND[body.of], subject, first, until)
    closed = await _closed_hours(deps, body.of, subject, first, until)
    # Asked after both reads: a loss before or during them makes it False.
    complete = await deps.counters.intact()
    latest_closed = hour_of(now - timedelta(seconds=deps.settings.rollup_lateness_s)) - HOUR
    total = Usage()
    hours = []
    for hour in sorted(set(live) | set(closed)):
        usage = live.get(hour) or closed[hour]
        total.add(usage)
        hours.append(
            HourUsage(hour_start=hour, closed=hour <= latest_closed, **amounts(usage).model_dump())
        )
    return UsageReport(
        of=body.of,
        id=subject,
        project_id=project,
        since=since,
        until=until,
        hours=hours,
        total=amounts(total),
        complete=complete,
    )
