"""Announcing budget events by webhook: ``budget.threshold_crossed`` and ``budget.exhausted``.

They follow billing's own events (``BudgetThresholdCrossed``, ``BudgetExhausted``) through a
durable consumer with an inbox, apart from the mails so that a mail server that is away delays
no webhook. Each event becomes one delivery per subscribed endpoint (the project's and the
global ones), queued in the transaction that records the event as applied; its body is built
and stored once, so every retry sends the same bytes under the same ``webhook-id``, and the
delivery loop signs, retries and logs it exactly as it does invoices.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid5

from sqlalchemy import insert, select

from compgrid_billing.adapters.tables import budget, delivery, project, webhook
from compgrid_billing.use_cases.deps import Deps
from compgrid_events.base import Money, utc_now, uuid7
from compgrid_events.billing import BudgetExhausted, BudgetThresholdCrossed
from compgrid_events.billing_api import BUDGET_EXHAUSTED, BUDGET_THRESHOLD_CROSSED
from compgrid_runtime.logs import get_logger
from compgrid_runtime.uow import UnitOfWork

log = get_logger(__name__)

EVENT_NAMESPACE = UUID("0c9e5f8a-3b7d-4f2e-a1c6-5d8b9e0f7a24")


def message_id(event_id: UUID, webhook_id: UUID) -> str:
    """The same message id on every attempt of one event to one endpoint."""
    return "msg_" + uuid5(EVENT_NAMESPACE, f"{event_id}:{webhook_id}").hex


def _money(value: Money) -> dict[str, str]:
    return {"amount": f"{value.amount:.2f}", "currency": value.currency}


def body(event_type: str, event: BudgetThresholdCrossed | BudgetExhausted, code: Any) -> bytes:
    """The webhook body of a budget event (Standard Webhooks' type/timestamp/data)."""
    data: dict[str, Any] = {
        "event_id": str(event.event_id),
        "budget_code_id": str(event.budget_code_id),
        "budget_code": code.code,
        "budget_name": code.name,
        "project_id": str(event.project_id),
        "project_name": code.project_name,
        "spent": _money(event.spent),
        "funding": _money(event.funding),
    }
    if isinstance(event, BudgetThresholdCrossed):
        data["threshold_percent"] = f"{event.threshold_percent.normalize():f}"
        data["runs_out_on"] = event.runs_out_on.isoformat() if event.runs_out_on else None
    else:
        data["behaviour"] = event.behaviour.value
    message = {"type": event_type, "timestamp": event.occurred_at.isoformat(), "data": data}
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


async def _code(uow: UnitOfWork, budget_code_id: UUID) -> Any:
    """The budget code's code and name with its project's name."""
    query = (
        select(budget.c.code, budget.c.name, project.c.name.label("project_name"))
        .select_from(budget)
        .join(project, project.c.id == budget.c.project_id)
        .where(budget.c.id == budget_code_id)
    )
    return (await uow.session.execute(query)).first()


async def announce(
    deps: Deps,
    uow: UnitOfWork,
    event_type: str,
    event: BudgetThresholdCrossed | BudgetExhausted,
) -> int:
    """Queue the event to every endpoint subscribed to it; return how many."""
    hooks = (
        await uow.session.execute(
            select(webhook.c.id, webhook.c.url).where(
                webhook.c.disabled_at.is_(None),
                webhook.c.project_id.is_(None) | (webhook.c.project_id == event.project_id),
                webhook.c.event_types.contains([event_type]),
            )
        )
    ).all()
    code = await _code(uow, event.budget_code_id) if hooks else None
    if code is None:
        return 0
    payload = body(event_type, event, code).decode()
    now = utc_now()
    rows = [
        {
            "id": uuid7(),
            "event_type": event_type,
            "payload": payload,
            "channel": "webhook",
            "recipient": hook.url,
            "webhook_id": hook.id,
            "message_id": message_id(event.event_id, hook.id),
            "state": "pending",
            "next_attempt_at": now,
            "give_up_at": now + timedelta(seconds=deps.settings.delivery_retry_for_s),
            "requested_by": f"event:{event_type}",
        }
        for hook in hooks
    ]
    await uow.session.execute(insert(delivery), rows)
    log.info("budget event queued", type=event_type, endpoints=len(rows))
    return len(rows)


async def on_threshold(deps: Deps, event: BudgetThresholdCrossed, uow: UnitOfWork) -> None:
    """Announce a crossed threshold to the endpoints that subscribed to it."""
    await announce(deps, uow, BUDGET_THRESHOLD_CROSSED, event)


async def on_exhausted(deps: Deps, event: BudgetExhausted, uow: UnitOfWork) -> None:
    """Announce an exhausted budget code to the endpoints that subscribed to it."""
    await announce(deps, uow, BUDGET_EXHAUSTED, event)
