"""The owner's dashboard in money: earnings per UTC day and per instance type, and the projects
and requesters who spent most, from one pass over the ledger (admins and finance)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import Date, and_, cast, func, select, tuple_

from compgrid_billing.adapters.tables import account, charge, instance, project, usage
from compgrid_billing.use_cases import rating
from compgrid_billing.use_cases.budgets import EXACT
from compgrid_billing.use_cases.deps import Deps
from compgrid_billing.use_cases.queries import ledger_money, reply
from compgrid_events import billing_api as api
from compgrid_runtime.access import require_role
from compgrid_runtime.rpc import Caller

_STAT_KEYS = {
    "day": cast(func.timezone("UTC", charge.c.hour_start), Date),
    "instance_type": instance.c.instance_type,
    "project_id": charge.c.project_id,
    "user_id": instance.c.requested_by,
}
"""What the stats sum the window's charges by, each per currency."""


def _stats_statement(body: api.StatsQuery) -> Any:
    """One pass over the window's ledger with a grouping set per key of ``_STAT_KEYS``
    (``by_<key>`` marks the rows of that key's set). An instance-hour's running time is
    counted once: with its first entry (kind ``usage``), not with later adjustments."""
    metered = and_(
        usage.c.instance_id == charge.c.instance_id,
        usage.c.hour_start == charge.c.hour_start,
        charge.c.kind == "usage",
    )
    return (
        select(
            charge.c.currency,
            *(key.label(name) for name, key in _STAT_KEYS.items()),
            *((func.grouping(key) == 0).label(f"by_{name}") for name, key in _STAT_KEYS.items()),
            func.count(charge.c.instance_id.distinct()).label("instances"),
            func.coalesce(func.sum(usage.c.running_s), 0).label("running_s"),
            func.sum(charge.c.total_scaled).label("amount"),
        )
        # every charged hour's instance is known: rating prices usage through it
        .select_from(
            charge.join(instance, instance.c.id == charge.c.instance_id).outerjoin(usage, metered)
        )
        .where(charge.c.hour_start >= body.since, charge.c.hour_start < body.until)
        .group_by(
            func.grouping_sets(*(tuple_(key, charge.c.currency) for key in _STAT_KEYS.values()))
        )
    )


def _top(rows: Sequence[Any], key: str, top: int) -> list[Any]:
    """The ``top`` biggest of each currency (amounts in different currencies do not compare),
    by currency, then biggest first; rows without a ``key`` are left out."""
    ranked = sorted(
        (r for r in rows if r._mapping[key] is not None),
        key=lambda r: (r.currency, -r.amount, str(r._mapping[key])),
    )
    taken: dict[str, int] = defaultdict(int)
    result = []
    for row in ranked:
        taken[row.currency] += 1
        if taken[row.currency] <= top:
            result.append(row)
    return result


def _earnings(rows: Sequence[Any]) -> list[api.EarningsDay]:
    """What each UTC day earned, per currency."""
    return [
        api.EarningsDay(day=r.day, currency=r.currency, amount=ledger_money(r.amount))
        for r in sorted(rows, key=lambda r: (r.day, r.currency))
    ]


def _types(rows: Sequence[Any]) -> list[api.TypeStats]:
    """Each instance type, by currency, then biggest first."""
    return [
        reply(
            api.TypeStats,
            r,
            running_hours=(Decimal(r.running_s) / 3600).quantize(EXACT),
            amount=ledger_money(r.amount),
        )
        for r in sorted(rows, key=lambda r: (r.currency, -r.amount, r.instance_type))
    ]


async def _top_projects(session: Any, rows: Sequence[Any], top: int) -> list[api.TopProject]:
    """The projects that spent most in each currency, with their names."""
    ranked = _top(rows, "project_id", top)
    found = select(project.c.id, project.c.name).where(
        project.c.id.in_([r.project_id for r in ranked])
    )
    names = {p.id: p.name for p in await session.execute(found)}
    return [
        reply(api.TopProject, r, name=names.get(r.project_id, ""), amount=ledger_money(r.amount))
        for r in ranked
    ]


async def _top_users(session: Any, rows: Sequence[Any], top: int) -> list[api.TopUser]:
    """The requesters who spent most in each currency; those billing has no account of (yet)
    with an empty name and address."""
    ranked = _top(rows, "user_id", top)
    found = select(account).where(account.c.id.in_([r.user_id for r in ranked]))
    people = {
        p.id: {"display_name": p.display_name, "email": p.email}
        for p in await session.execute(found)
    }
    unknown = {"display_name": "", "email": ""}
    return [
        reply(api.TopUser, r, **people.get(r.user_id, unknown), amount=ledger_money(r.amount))
        for r in ranked
    ]


async def stats(deps: Deps, caller: Caller, body: api.StatsQuery) -> api.BillingStats:
    """Earnings per UTC day and per instance type, and the projects and requesters who spent
    most, over a window (admins and finance)."""
    require_role(caller.require(), "finance")
    async with deps.uow() as uow:
        await rating.for_large_statements(uow)  # up to 400 days of every project's ledger
        rows = (await uow.session.execute(_stats_statement(body))).all()
        sets = {name: [r for r in rows if r._mapping[f"by_{name}"]] for name in _STAT_KEYS}
        top_projects = await _top_projects(uow.session, sets["project_id"], body.top)
        top_users = await _top_users(uow.session, sets["user_id"], body.top)
    return api.BillingStats(
        since=body.since,
        until=body.until,
        earnings=_earnings(sets["day"]),
        by_instance_type=_types(sets["instance_type"]),
        top_projects=top_projects,
        top_users=top_users,
    )
