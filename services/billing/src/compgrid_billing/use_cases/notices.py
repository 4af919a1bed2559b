"""Telling people about their money: a mail to the PI and the project's billing contacts when a
budget code crosses a threshold or is exhausted.

The mails follow billing's own events (``BudgetThresholdCrossed``, ``BudgetExhausted``) through a
durable consumer with an inbox, so each goes out once per event (at least once if the process
dies between sending and committing); a mail server that is away makes the event retried.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import select

from compgrid_billing.adapters.tables import account, budget, project
from compgrid_billing.domain.invoice import addresses
from compgrid_billing.use_cases.deps import Deps
from compgrid_events.auth import HardLimitBehaviour
from compgrid_events.billing import BudgetExhausted, BudgetThresholdCrossed
from compgrid_runtime.logs import get_logger
from compgrid_runtime.mail import Mail
from compgrid_runtime.uow import UnitOfWork

log = get_logger(__name__)

_AT_LIMIT = {
    HardLimitBehaviour.STOP_INSTANCES: "its running instances are being stopped",
    HardLimitBehaviour.BLOCK_NEW: "new instances are refused; running ones continue",
}


async def _audience(uow: UnitOfWork, budget_code_id: UUID) -> tuple[Any, list[str]] | None:
    """The code with its project's name, and who hears about its money."""
    row = (
        await uow.session.execute(
            select(
                budget.c.code,
                budget.c.name,
                budget.c.hard_limit_behaviour,
                project.c.name.label("project_name"),
                project.c.billing_contacts,
                account.c.email,
            )
            .select_from(budget)
            .join(project, project.c.id == budget.c.project_id)
            .outerjoin(account, account.c.id == project.c.pi_user_id)
            .where(budget.c.id == budget_code_id)
        )
    ).first()
    if row is None:
        return None
    return row, addresses(row.email, *row.billing_contacts)


async def _send(deps: Deps, uow: UnitOfWork, budget_code_id: UUID, subject: str, text: str) -> None:
    found = await _audience(uow, budget_code_id)
    if found is None or not found[1]:
        log.info("budget notice with nobody to tell", budget_code=str(budget_code_id))
        return
    row, to = found
    issuer = deps.settings.issuer_name
    await deps.mailer.send(
        Mail(
            to=tuple(to),
            subject=f"{issuer}: {subject.format(code=row.code)}",
            text=f"Project {row.project_name}, budget code {row.code} ({row.name})\n\n{text}\n\n"
            f"{issuer}\n",
        )
    )


async def on_threshold(deps: Deps, event: BudgetThresholdCrossed, uow: UnitOfWork) -> None:
    """Mail that a threshold was crossed, with the forecast."""
    spent, funding = event.spent, event.funding
    forecast = (
        f"At the spending of the last {deps.settings.forecast_window_days} days the funding runs "
        f"out on {event.runs_out_on.isoformat()}."
        if event.runs_out_on
        else "Nothing was spent recently, so no date is forecast."
    )
    percent = f"{event.threshold_percent.normalize():f}"
    await _send(
        deps,
        uow,
        event.budget_code_id,
        f"budget code {{code}} has reached {percent} % of its funding",
        f"Spent {spent.amount:.2f} {spent.currency} of {funding.amount:.2f} {funding.currency}.\n"
        + forecast,
    )


async def on_exhausted(deps: Deps, event: BudgetExhausted, uow: UnitOfWork) -> None:
    """Mail that the funding is used up and what happens now."""
    await _send(
        deps,
        uow,
        event.budget_code_id,
        "budget code {code} is exhausted",
        f"Spent {event.spent.amount:.2f} {event.spent.currency} of "
        f"{event.funding.amount:.2f} {event.funding.currency}: the funding is used up and "
        f"{_AT_LIMIT[event.behaviour]}. Ask your grants office to add funding to go on.",
    )
