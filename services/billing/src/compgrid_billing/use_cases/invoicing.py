"""Billing runs: one invoice per project and budget code for a closed period.

An invoice takes every ledger entry of its budget code that no invoice covers yet and whose
hour is before the period's end: entries of hours in the period are its lines (per instance and
resource), entries of earlier hours — corrections after an earlier invoice, or usage that
arrived late — its adjustments. Issued invoices never change; a later correction lands on a
later invoice. Coverage needs no update of the ledger: an invoice records its ``watermark``
(the newest entry id it saw) and covers its code's entries with an hour before its period's
end and an id up to the watermark.

Runs are idempotent: a period is run once (``billing_run``); running it again issues nothing.
Invoices are issued in batches, each one transaction under the ledger lock that also takes
the invoice numbers from the counter row, so numbers have no gaps and a run killed between
batches is completed by running it again. Two runs of one period at once take turns batch by
batch; a project and budget code gets one invoice per run (a unique key), never two.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid5

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from compgrid_billing.adapters.locks import lock_ledger
from compgrid_billing.adapters.tables import (
    account,
    billing_run,
    budget,
    delivery,
    instance,
    invoice,
    invoice_counter,
    invoice_line,
    price_rate,
    project,
    webhook,
)
from compgrid_billing.domain.invoice import UNITS, LineKind, Resource, addresses, quantity_of
from compgrid_billing.domain.money import round_money, unscale
from compgrid_billing.use_cases import rating
from compgrid_billing.use_cases.deps import Deps
from compgrid_events.base import Money, utc_now, uuid7
from compgrid_events.billing import InvoiceIssued
from compgrid_events.billing_api import INVOICE_ISSUED
from compgrid_runtime.errors import Invalid
from compgrid_runtime.faults import fault_point
from compgrid_runtime.logs import get_logger
from compgrid_runtime.uow import UnitOfWork

log = get_logger(__name__)

DELIVERY_NAMESPACE = UUID("6f1d3b0e-5a7c-4c1e-9d7e-1b3f0f6c2a11")


def check_period(start: datetime, end: datetime, now: datetime, close_after_s: float) -> None:
    """Refuse, with the reason, a period that cannot be invoiced (yet)."""
    for name, moment in (("period_start", start), ("period_end", end)):
        if moment.tzinfo is None:
            raise Invalid(f"{name} must carry a time zone", field=name)
        if moment.minute or moment.second or moment.microsecond:
            raise Invalid(f"{name} must be on the hour (usage is priced by the hour)", field=name)
    if end <= start:
        raise Invalid("period_end must be after period_start", field="period_end")
    if end - start > timedelta(days=366):
        raise Invalid("a period is at most 366 days", field="period_end")
    if start >= now:
        raise Invalid(
            "the period is in the future: it cannot be invoiced before it has ended",
            code="period_open",
            field="period_start",
        )
    closes = end + timedelta(seconds=close_after_s)
    if closes > now:
        raise Invalid(
            f"the period is still open: it can be invoiced from {closes.isoformat()} on, "
            "once its last hours have been metered",
            code="period_open",
            field="period_end",
        )


def month_before(now: datetime) -> tuple[datetime, datetime]:
    """The calendar month (UTC) before the one ``now`` is in."""
    end = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    start = (end - timedelta(days=1)).replace(day=1)
    return start, end


@dataclass(frozen=True)
class RunResult:
    """A run's row and how many invoices this call issued."""

    run: Any
    issued_now: int


async def run_period(
    deps: Deps, start: datetime, end: datetime, started_by: str, now: datetime | None = None
) -> RunResult:
    """Invoice ``[start, end)``: every project and budget code with uncovered charges."""
    check_period(start, end, now or utc_now(), deps.settings.period_close_after_s)
    async with deps.uow() as uow:  # what waited for prices is priced before invoicing
        await rating.rate_parked(uow)
        await uow.commit()
    async with deps.uow() as uow:
        await uow.session.execute(
            pg_insert(billing_run)
            .values(
                id=uuid7(),
                period_start=start,
                period_end=end,
                state="running",
                started_by=started_by,
            )
            .on_conflict_do_nothing()
        )
        await uow.commit()
    issued = 0
    while True:
        async with deps.uow() as uow:
            await lock_ledger(uow)
            run = (
                await uow.session.execute(
                    select(billing_run)
                    .where(billing_run.c.period_start == start, billing_run.c.period_end == end)
                    .with_for_update()
                )
            ).one()
            if run.state == "completed":
                return RunResult(run, issued)
            count = await _issue_batch(deps, uow, run)
            if count == 0:
                total = await uow.session.scalar(
                    select(func.count()).select_from(invoice).where(invoice.c.run_id == run.id)
                )
                await uow.session.execute(
                    update(billing_run)
                    .where(billing_run.c.id == run.id)
                    .values(state="completed", invoices=total, finished_at=func.now())
                )
                await uow.commit()
                log.info(
                    "billing run completed",
                    period_start=start.isoformat(),
                    period_end=end.isoformat(),
                    invoices=total,
                    issued_now=issued,
                )
                continue  # read the completed row back
            await uow.commit()
            issued += count
            fault_point("billing.after_invoice_batch")


WATERMARK = """
SELECT CASE WHEN is_called THEN last_value ELSE 0 END
FROM billing.charge_id_seq
"""

_PENDING = """
SELECT b.project_id, b.id AS budget_code_id
FROM billing.budget b
WHERE NOT EXISTS (
    SELECT 1 FROM billing.invoice i WHERE i.run_id = :run
    AND i.project_id = b.project_id AND i.budget_code_id = b.id)
  AND EXISTS (
    SELECT 1 FROM billing.charge c
    WHERE c.budget_code_id = b.id AND c.hour_start < :end AND c.id <= :watermark
      AND NOT EXISTS (
        SELECT 1 FROM billing.invoice i WHERE i.budget_code_id = c.budget_code_id
        AND c.hour_start < i.period_end AND c.id <= i.watermark))
ORDER BY b.project_id, b.id
LIMIT :limit
"""

_LINES = """
SELECT c.project_id, c.budget_code_id, c.instance_id, c.hour_start >= :start AS in_period,
       min(c.currency) AS currency,
       sum(c.vcpu_s) AS vcpu_q, sum(c.vcpu_scaled) AS vcpu_a,
       sum(c.memory_gib_s) AS memory_q, sum(c.memory_scaled) AS memory_a,
       sum(c.storage_gib_s) AS storage_q, sum(c.storage_scaled) AS storage_a,
       min(c.tier_id::text) AS tier_min, max(c.tier_id::text) AS tier_max,
       min(c.rate_from) AS rate_min, max(c.rate_from) AS rate_max
FROM billing.charge c
WHERE c.budget_code_id = ANY(CAST(:budgets AS uuid[]))
  AND c.hour_start < :end AND c.id <= :watermark
  AND NOT EXISTS (
    SELECT 1 FROM billing.invoice i WHERE i.budget_code_id = c.budget_code_id
    AND c.hour_start < i.period_end AND c.id <= i.watermark)
GROUP BY c.project_id, c.budget_code_id, c.instance_id, in_period
"""

# GPU hours and amounts per model: maps taken apart row by row (a map aggregate per row costs
# ten times more); seconds and amounts separately, since a price correction changes only the
# amount of a model.
_GPU_LINES = """
SELECT c.budget_code_id, c.instance_id, c.hour_start >= :start AS in_period, g.model,
       sum(g.seconds) AS seconds, sum(g.scaled) AS scaled
FROM billing.charge c
CROSS JOIN LATERAL (
  SELECT key AS model, (value #>> '{}')::numeric AS seconds, 0::numeric AS scaled
  FROM jsonb_each(c.gpu_s)
  UNION ALL
  SELECT key, 0, (value #>> '{}')::numeric FROM jsonb_each(c.gpu_scaled)
) g
WHERE c.budget_code_id = ANY(CAST(:budgets AS uuid[]))
  AND c.hour_start < :end AND c.id <= :watermark
  AND NOT EXISTS (
    SELECT 1 FROM billing.invoice i WHERE i.budget_code_id = c.budget_code_id
    AND c.hour_start < i.period_end AND c.id <= i.watermark)
  AND (c.gpu_s <> '{}'::jsonb OR c.gpu_scaled <> '{}'::jsonb)
GROUP BY c.budget_code_id, c.instance_id, in_period, g.model
"""


@dataclass
class _Draft:
    project_id: UUID
    budget_code_id: UUID
    currency: str
    lines: list[dict[str, Any]]


def _rates_key(row: Any) -> tuple[str, datetime] | None:
    if row.tier_min != row.tier_max or row.rate_min != row.rate_max:
        return None
    return row.tier_min, row.rate_min


def _line_values(
    row: Any,
    gpus: dict[str, tuple[Decimal, Decimal]],
    rates: dict[tuple[str, datetime], Any],
    names: dict[UUID, str],
) -> list[dict[str, Any]]:
    """The lines of one instance in one invoice (usage or corrections), zero lines left out."""
    kind = LineKind.USAGE if row.in_period else LineKind.ADJUSTMENT
    key = _rates_key(row) if row.in_period else None
    rate_row = rates.get(key) if key else None
    found: list[tuple[Resource, str, Any, Any, Any]] = [
        (Resource.VCPU, "", row.vcpu_q, row.vcpu_a, rate_row and rate_row.vcpu_hour),
        (Resource.MEMORY, "", row.memory_q, row.memory_a, rate_row and rate_row.memory_gib_hour),
        (
            Resource.STORAGE,
            "",
            row.storage_q,
            row.storage_a,
            rate_row and rate_row.storage_gib_month,
        ),
    ]
    for model, (seconds, scaled) in sorted(gpus.items()):
        gpu_rate = Decimal(str(rate_row.gpu_hour[model])) if rate_row else None
        found.append((Resource.GPU, model, seconds, scaled, gpu_rate))
    lines = []
    for resource, model, seconds, scaled, rate in found:
        q = quantity_of(resource, Decimal(str(seconds)))
        a = round_money(unscale(Decimal(str(scaled))), row.currency)
        if q == 0 and a == 0:
            continue
        lines.append(
            {
                "kind": kind.value,
                "instance_id": row.instance_id,
                "instance_name": names.get(row.instance_id, str(row.instance_id)[:8]),
                "resource": resource.value,
                "model": model,
                "quantity": q,
                "unit": UNITS[resource],
                "rate": Decimal(rate) if rate is not None else None,
                "amount": a,
            }
        )
    return lines


async def _issue_batch(deps: Deps, uow: UnitOfWork, run: Any) -> int:
    """Issue the next batch of invoices of a run (ledger lock held); return how many."""
    session = uow.session
    await rating.for_large_statements(uow)
    # Under the ledger lock no rating is in flight: every id the sequence gave is committed.
    watermark = await session.scalar(text(WATERMARK))
    pending = (
        await session.execute(
            text(_PENDING),
            {
                "end": run.period_end,
                "watermark": watermark,
                "run": run.id,
                "limit": deps.settings.invoice_batch,
            },
        )
    ).all()
    if not pending:
        return 0
    pairs = {(p.project_id, p.budget_code_id) for p in pending}
    budgets = sorted({p.budget_code_id for p in pending})
    params = {
        "start": run.period_start,
        "end": run.period_end,
        "watermark": watermark,
        "budgets": budgets,
    }
    rows = (await session.execute(text(_LINES), params)).all()
    gpus: dict[tuple[UUID, bool], dict[str, tuple[Decimal, Decimal]]] = {}
    for g in await session.execute(text(_GPU_LINES), params):
        gpus.setdefault((g.instance_id, g.in_period), {})[g.model] = (g.seconds, g.scaled)
    instance_ids = sorted({r.instance_id for r in rows})
    names = await _instance_names(session, instance_ids)
    rates = {
        (str(r.tier_id), r.effective_from): r for r in await session.execute(select(price_rate))
    }
    drafts: dict[tuple[UUID, UUID], _Draft] = {}
    for row in sorted(
        rows, key=lambda r: (not r.in_period, names.get(r.instance_id, ""), str(r.instance_id))
    ):
        pair = (row.project_id, row.budget_code_id)
        if pair not in pairs:
            continue
        draft = drafts.setdefault(pair, _Draft(pair[0], pair[1], row.currency, []))
        mine = gpus.get((row.instance_id, row.in_period), {})
        draft.lines.extend(_line_values(row, mine, rates, names))
    ordered = [drafts[pair] for pair in sorted(drafts)]
    if not ordered:
        return 0
    last = await session.scalar(
        update(invoice_counter)
        .where(invoice_counter.c.id == 1)
        .values(last_number=invoice_counter.c.last_number + len(ordered))
        .returning(invoice_counter.c.last_number)
    )
    first = int(last) - len(ordered) + 1
    parties = await _parties(session, budgets)
    invoices, lines = [], []
    for offset, draft in enumerate(ordered):
        sequence = first + offset
        invoice_id = uuid7()
        usage_sum = sum((x["amount"] for x in draft.lines if x["kind"] == "usage"), Decimal(0))
        adjust_sum = sum(
            (x["amount"] for x in draft.lines if x["kind"] == "adjustment"), Decimal(0)
        )
        party = parties[draft.budget_code_id]
        number = f"{deps.settings.invoice_prefix}-{sequence:07d}"
        invoices.append(
            {
                "id": invoice_id,
                "number": number,
                "sequence": sequence,
                "run_id": run.id,
                "project_id": draft.project_id,
                "budget_code_id": draft.budget_code_id,
                "period_start": run.period_start,
                "period_end": run.period_end,
                "currency": draft.currency,
                "subtotal": usage_sum,
                "adjustments": adjust_sum,
                "total": usage_sum + adjust_sum,
                "watermark": watermark,
                **party,
            }
        )
        for position, line in enumerate(draft.lines, start=1):
            lines.append({"invoice_id": invoice_id, "position": position, **line})
        uow.emit(
            InvoiceIssued(
                invoice_id=invoice_id,
                number=number,
                project_id=draft.project_id,
                budget_code_id=draft.budget_code_id,
                period_start=run.period_start,
                period_end=run.period_end,
                total=Money(amount=usage_sum + adjust_sum, currency=draft.currency),
            )
        )
    await session.execute(insert(invoice), invoices)
    if lines:
        await session.execute(insert(invoice_line), lines)
    await plan_deliveries(deps, session, invoices, requested_by="billing run")
    return len(invoices)


async def _instance_names(session: Any, ids: list[UUID]) -> dict[UUID, str]:
    if not ids:
        return {}
    rows = await session.execute(
        select(instance.c.id, instance.c.name).where(instance.c.id.in_(ids))
    )
    return {row.id: row.name for row in rows}


async def _parties(session: Any, budgets: list[UUID]) -> dict[UUID, dict[str, str]]:
    """Names printed on each budget code's invoice, as they are now."""
    rows = await session.execute(
        select(
            budget.c.id,
            budget.c.project_id,
            budget.c.code,
            budget.c.name,
            project.c.name.label("project_name"),
            account.c.display_name,
            account.c.email,
        )
        .select_from(budget)
        .outerjoin(project, project.c.id == budget.c.project_id)
        .outerjoin(account, account.c.id == project.c.pi_user_id)
        .where(budget.c.id.in_(budgets))
    )
    return {
        row.id: {
            "project_name": row.project_name or str(row.project_id),
            "budget_code": row.code,
            "budget_name": row.name,
            "pi_name": row.display_name or "",
            "pi_email": row.email or "",
        }
        for row in rows
    }


def message_id(invoice_id: UUID, recipient: str) -> str:
    """The same message id on every attempt and re-send of one invoice to one recipient."""
    return "msg_" + uuid5(DELIVERY_NAMESPACE, f"{invoice_id}:{recipient}").hex


async def plan_deliveries(
    deps: Deps,
    session: Any,
    invoices: list[dict[str, Any]],
    *,
    requested_by: str,
    channel: str | None = None,
    email: str | None = None,
    webhook_id: UUID | None = None,
) -> int:
    """Queue each invoice to its recipients: by email to the PI and the project's billing
    contacts, by webhook to the project's and the global endpoints for invoices."""
    if not invoices:
        return 0
    projects = sorted({i["project_id"] for i in invoices})
    contacts = {
        row.id: (row.email, list(row.billing_contacts))
        for row in await session.execute(
            select(project.c.id, project.c.billing_contacts, account.c.email)
            .select_from(project)
            .outerjoin(account, account.c.id == project.c.pi_user_id)
            .where(project.c.id.in_(projects))
        )
    }
    hooks = (
        await session.execute(
            select(webhook).where(
                webhook.c.disabled_at.is_(None),
                (webhook.c.project_id.is_(None)) | (webhook.c.project_id.in_(projects)),
                webhook.c.event_types.contains([INVOICE_ISSUED]),
            )
        )
    ).all()
    now = utc_now()
    give_up = now + timedelta(seconds=deps.settings.delivery_retry_for_s)
    planned: list[dict[str, Any]] = []

    def add(inv: dict[str, Any], kind: str, recipient: str, hook: UUID | None) -> None:
        planned.append(
            {
                "id": uuid7(),
                "invoice_id": inv["id"],
                "channel": kind,
                "recipient": recipient,
                "webhook_id": hook,
                "message_id": message_id(inv["id"], str(hook) if hook else recipient),
                "state": "pending",
                "next_attempt_at": now,
                "give_up_at": give_up,
                "requested_by": requested_by,
            }
        )

    for inv in invoices:
        if channel in (None, "email"):
            pi_email, extra = contacts.get(inv["project_id"], (None, []))
            for address in addresses(*([email] if email else [pi_email, *extra])):
                add(inv, "email", address, None)
        if channel in (None, "webhook") and email is None:
            for hook in hooks:
                if hook.project_id not in (None, inv["project_id"]):
                    continue
                if webhook_id is not None and hook.id != webhook_id:
                    continue
                add(inv, "webhook", hook.url, hook.id)
    if planned:
        await session.execute(insert(delivery), planned)
    return len(planned)


async def schedule_forever(deps: Deps) -> None:
    """Invoice each past month on its own, ``monthly_run_after_h`` after it ended."""
    while True:
        try:
            await run_due_month(deps)
        except Exception as exc:  # tried again at the next check
            log.warning("scheduled billing run failed", error=repr(exc))
        await asyncio.sleep(deps.settings.schedule_check_s)


async def run_due_month(deps: Deps, now: datetime | None = None) -> RunResult | None:
    """Run last month when it is due and not yet completed; None when nothing was due."""
    now = now or utc_now()
    start, end = month_before(now)
    if now < end + timedelta(hours=deps.settings.monthly_run_after_h):
        return None
    async with deps.uow() as uow:
        state = await uow.session.scalar(
            select(billing_run.c.state).where(
                billing_run.c.period_start == start, billing_run.c.period_end == end
            )
        )
    if state == "completed":
        return None
    return await run_period(deps, start, end, "schedule", now=now)
