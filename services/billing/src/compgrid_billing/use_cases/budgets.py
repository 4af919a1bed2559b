"""Keeping budget codes current: balance, state, forecast, thresholds and exhaustion.

After anything that changes a code's money (charges rated, a hold placed or released, new
funding or dates), :func:`refresh` recomputes it under the code's row lock and publishes, in the
same transaction: ``BudgetStatusChanged`` when what admission sees changed (state, what is
available, the forecast or the holds it counts); ``BudgetThresholdCrossed`` once for each soft
threshold per funding period; ``BudgetExhausted`` when the code becomes exhausted.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from compgrid_billing.adapters.locks import lock_ledger
from compgrid_billing.adapters.tables import budget, budget_notice, charge, instance
from compgrid_billing.config import Settings
from compgrid_billing.domain.budgets import BudgetView, crossed, runs_out_on, state_of
from compgrid_billing.domain.money import AMOUNT_SCALE, unscale
from compgrid_events.auth import HardLimitBehaviour
from compgrid_events.base import Money, utc_now
from compgrid_events.billing import (
    BudgetExhausted,
    BudgetState,
    BudgetStatusChanged,
    BudgetThresholdCrossed,
)
from compgrid_runtime.uow import UnitOfWork

EXACT = Decimal("0.000001")


"""Published amounts carry six decimals, as the inventory stores them."""


def held_now() -> Any:
    """What an instance's active hold still holds: its amount less what it was charged since."""
    since = (instance.c.charged_scaled - instance.c.charged_at_hold_scaled) / AMOUNT_SCALE
    return func.greatest(0, instance.c.hold_amount - since)


async def holds_of(uow: UnitOfWork, ids: list[UUID]) -> dict[UUID, tuple[Decimal, list[UUID]]]:
    """Per budget code: what its active holds still hold, and whose holds they are."""
    rows = await uow.session.execute(
        select(
            instance.c.budget_code_id,
            func.sum(held_now()),
            func.array_agg(instance.c.id),
        )
        .where(instance.c.budget_code_id.in_(ids), instance.c.hold_active)
        .group_by(instance.c.budget_code_id)
    )
    return {row[0]: (Decimal(row[1]), sorted(row[2])) for row in rows}


async def burn_of(uow: UnitOfWork, ids: list[UUID], since: datetime) -> dict[UUID, Decimal]:
    """Per budget code: what its ledger charged for hours from ``since`` on."""
    rows = await uow.session.execute(
        select(charge.c.budget_code_id, func.sum(charge.c.total_scaled))
        .where(charge.c.budget_code_id.in_(ids), charge.c.hour_start >= since)
        .group_by(charge.c.budget_code_id)
    )
    return {row[0]: unscale(row[1]) for row in rows}


def view_of(row: Any, held: Decimal) -> BudgetView:
    """The rules' view of a budget row."""
    return BudgetView(
        funding=Decimal(row.funding),
        charged=unscale(row.charged_scaled),
        held=held,
        valid_from=row.valid_from,
        valid_to=row.valid_to,
        status=row.status,
    )


def _money(amount: Decimal, currency: str) -> Money:
    return Money(amount=amount.quantize(EXACT), currency=currency)


async def refresh(
    uow: UnitOfWork, settings: Settings, ids: Iterable[UUID], now: datetime | None = None
) -> int:
    """Recompute these budget codes and publish what changed; return how many changed."""
    wanted = sorted(set(ids))
    if not wanted:
        return 0
    now = now or utc_now()
    today = now.date()
    rows = (
        await uow.session.execute(
            select(budget).where(budget.c.id.in_(wanted)).order_by(budget.c.id).with_for_update()
        )
    ).all()
    if not rows:
        return 0
    found = [row.id for row in rows]
    holds = await holds_of(uow, found)
    window = settings.forecast_window_days
    burns = await burn_of(uow, found, now - timedelta(days=window))
    changed = 0
    updates: list[dict[str, Any]] = []
    for row in rows:
        held, held_ids = holds.get(row.id, (Decimal(0), []))
        view = view_of(row, held)
        state = state_of(view, today)
        available = view.available.quantize(EXACT)
        runs_out = runs_out_on(view, burns.get(row.id, Decimal(0)) / window, today)
        held_json = [str(i) for i in held_ids]
        same = (
            row.state == state.value
            and row.available is not None
            and Decimal(row.available) == available
            and row.runs_out_on == runs_out
            and list(row.held_ids) == held_json
        )
        await _notice_thresholds(uow, row, view, runs_out)
        if same:
            continue
        version = row.status_version + 1
        uow.emit(
            BudgetStatusChanged(
                budget_code_id=row.id,
                project_id=row.project_id,
                state=state,
                funding=_money(view.funding, row.currency),
                available=_money(available, row.currency),
                version=version,
                runs_out_on=runs_out,
                held_instance_ids=tuple(held_ids),
            )
        )
        if state is BudgetState.EXHAUSTED and row.state != BudgetState.EXHAUSTED.value:
            uow.emit(
                BudgetExhausted(
                    budget_code_id=row.id,
                    project_id=row.project_id,
                    behaviour=HardLimitBehaviour(row.hard_limit_behaviour),
                    spent=_money(view.charged, row.currency),
                    funding=_money(view.funding, row.currency),
                )
            )
        updates.append(
            {
                "b_id": row.id,
                "state": state.value,
                "available": available,
                "runs_out_on": runs_out,
                "held_ids": held_json,
                "status_version": version,
            }
        )
        changed += 1
    if updates:
        await uow.session.execute(
            update(budget)
            .where(budget.c.id == bindparam("b_id"))
            .values({k: bindparam(k) for k in updates[0] if k != "b_id"}),
            updates,
        )
    return changed


async def _notice_thresholds(
    uow: UnitOfWork, row: Any, view: BudgetView, runs_out: date | None
) -> None:
    """Announce each soft threshold the spending has newly reached; arm again those it has
    fallen below (the funding was raised)."""
    reached = crossed(view, (Decimal(str(t)) for t in row.thresholds))
    await uow.session.execute(
        delete(budget_notice).where(
            budget_notice.c.budget_code_id == row.id,
            budget_notice.c.threshold_percent.not_in(reached),
        )
    )
    if not reached:
        return
    statement = (
        pg_insert(budget_notice)
        .values([{"budget_code_id": row.id, "threshold_percent": t} for t in reached])
        .on_conflict_do_nothing()
        .returning(budget_notice.c.threshold_percent)
    )
    new = sorted(Decimal(r[0]) for r in await uow.session.execute(statement))
    for threshold in new:
        uow.emit(
            BudgetThresholdCrossed(
                budget_code_id=row.id,
                project_id=row.project_id,
                threshold_percent=threshold,
                spent=_money(view.charged, row.currency),
                funding=_money(view.funding, row.currency),
                runs_out_on=runs_out,
            )
        )


async def refresh_all(deps: Any, now: datetime | None = None, chunk: int = 1000) -> int:
    """Recompute every budget code (forecasts age and dates pass without any new charge);
    return how many changed."""
    async with deps.uow() as uow:
        ids = list(await uow.session.scalars(select(budget.c.id).order_by(budget.c.id)))
    changed = 0
    for first in range(0, len(ids), chunk):
        async with deps.uow() as uow:
            await lock_ledger(uow)
            changed += await refresh(uow, deps.settings, ids[first : first + chunk], now)
            await uow.commit()
    return changed
