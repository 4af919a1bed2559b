"""What billing answers: costs, budgets with forecasts, invoices and their documents, the
finance export, billing runs, deliveries and parked usage.

Who may ask: admins and finance about every project; a project's PI about that project (its
members too about its budget codes' status); to anyone else a project's money does not exist
(not found). A list asked for without a project lists what the caller may see.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from dataclasses import asdict
from datetime import timedelta
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID

from pydantic import BaseModel
from sqlalchemy import Date, cast, func, select

from compgrid_billing.adapters.tables import (
    billing_run,
    budget,
    budget_notice,
    charge,
    delivery,
    delivery_attempt,
    instance,
    invoice,
    invoice_line,
)
from compgrid_billing.domain.documents import export_csv, render_csv, render_pdf
from compgrid_billing.domain.invoice import UNITS, ExportRow, InvoiceDocument, Resource, quantity_of
from compgrid_billing.domain.money import unscale
from compgrid_billing.use_cases import rating
from compgrid_billing.use_cases.budget_keys import budget_named, find_budget_code
from compgrid_billing.use_cases.budgets import EXACT, burn_of, holds_of, view_of
from compgrid_billing.use_cases.delivery import document_of, load_document
from compgrid_billing.use_cases.deps import Deps
from compgrid_events import billing_api as api
from compgrid_events.base import Money, utc_now
from compgrid_runtime.access import require_role
from compgrid_runtime.errors import Forbidden, Invalid, NotFound
from compgrid_runtime.rpc import Caller
from compgrid_runtime.tokens import Principal

M = TypeVar("M", bound=BaseModel)


def reply(model: type[M], row: Any, **given: Any) -> M:
    """A reply model from a row: fields not ``given`` are the row's columns of the same name."""
    columns = row._mapping
    return model(
        **{n: columns[n] for n in model.model_fields if n not in given and n in columns}, **given
    )


def sees_everything(principal: Principal) -> bool:
    """Admins and finance read every project's money."""
    return principal.has_role("admin", "finance")


def require_pi_or(
    principal: Principal, project_id: UUID | None, *roles: str, missing: str = "no such project"
) -> None:
    """Refuse unless the caller holds one of ``roles`` or is the project's PI. Outsiders are
    told ``missing``, what an id that does not exist gets, so they learn nothing."""
    if principal.has_role(*roles):
        return
    if project_id is None:
        raise Forbidden(f"only {' and '.join(roles)} may do this for every project")
    role = principal.project_role(project_id)
    if role is None:
        raise NotFound(missing)
    if role != "pi":
        raise Forbidden(f"only the project's PI and {' and '.join(roles)} may do this")


def require_money_reader(
    principal: Principal, project_id: UUID | None, missing: str = "no such project"
) -> None:
    """Refuse unless the caller is admin, finance or the project's PI."""
    require_pi_or(principal, project_id, "admin", "finance", missing=missing)


def require_budget_reader(
    principal: Principal, project_id: UUID, missing: str = "no such project"
) -> None:
    """Refuse unless the caller is admin, finance or in the project (members see its budget
    status)."""
    if not sees_everything(principal) and principal.project_role(project_id) is None:
        raise NotFound(missing)


def own_projects(principal: Principal, *roles: str) -> list[UUID]:
    """The projects the caller holds one of ``roles`` in (any role when none is named)."""
    return [p for p, role in principal.projects.items() if not roles or role in roles]


# Costs -----------------------------------------------------------------------------------

_COLUMN = {
    api.CostsOf.INSTANCE: charge.c.instance_id,
    api.CostsOf.PROJECT: charge.c.project_id,
    api.CostsOf.BUDGET_CODE: charge.c.budget_code_id,
}


def ledger_money(scaled: Decimal) -> Decimal:
    """A ledger sum as money, to six decimals (unrounded to the currency)."""
    return unscale(scaled).quantize(EXACT)


async def _owner(session: Any, body: api.CostsQuery) -> tuple[UUID, UUID, UUID | None]:
    """The id of whose costs are asked for (a budget code's, named by id or code), the project
    they belong to and, for an instance, who requested it."""
    if body.of is api.CostsOf.BUDGET_CODE:
        return (*await find_budget_code(session, body.id, "id"), None)
    subject = UUID(str(body.id))  # instances and projects are named by id only
    if body.of is api.CostsOf.PROJECT:
        return subject, subject, None
    query = select(instance.c.project_id, instance.c.requested_by).where(instance.c.id == subject)
    found = (await session.execute(query)).first()
    if found is None:
        raise NotFound(_missing(body), field="id")
    return subject, UUID(str(found[0])), found[1]


def _missing(body: api.CostsQuery) -> str:
    return f"no such {body.of.value.replace('_', ' ')}"


def require_cost_reader(
    principal: Principal, project_id: UUID, requester: UUID | None, missing: str
) -> None:
    """Refuse unless the caller reads the project's money, or requested the instance (and is
    still in its project)."""
    own = requester == principal.user_id and principal.project_role(project_id) is not None
    if not own:
        require_money_reader(principal, project_id, missing)


async def ledger_sums(session: Any, *where: Any) -> tuple[str | None, Decimal, list[Any]]:
    """The currency, total and per-resource costs of the ledger entries ``where`` selects."""
    sums = (
        await session.execute(
            select(
                func.min(charge.c.currency),
                func.coalesce(func.sum(charge.c.vcpu_s), 0),
                func.coalesce(func.sum(charge.c.vcpu_scaled), 0),
                func.coalesce(func.sum(charge.c.memory_gib_s), 0),
                func.coalesce(func.sum(charge.c.memory_scaled), 0),
                func.coalesce(func.sum(charge.c.storage_gib_s), 0),
                func.coalesce(func.sum(charge.c.storage_scaled), 0),
                func.billing.map_sum(charge.c.gpu_s),
                func.billing.map_sum(charge.c.gpu_scaled),
                func.coalesce(func.sum(charge.c.total_scaled), 0),
            ).where(*where)
        )
    ).one()
    currency, vq, va, mq, ma, sq, sa, gq, ga, total = sums
    resources = [
        api.ResourceCost(
            resource=r.value, unit=UNITS[r], quantity=quantity_of(r, q), amount=ledger_money(a)
        )
        for r, q, a in (
            (Resource.VCPU, vq, va),
            (Resource.MEMORY, mq, ma),
            (Resource.STORAGE, sq, sa),
        )
    ]
    for model, hours in sorted((gq or {}).items()):
        resources.append(
            api.ResourceCost(
                resource=Resource.GPU.value,
                model=model,
                unit=UNITS[Resource.GPU],
                quantity=quantity_of(Resource.GPU, Decimal(str(hours))),
                amount=ledger_money(Decimal(str((ga or {}).get(model, 0)))),
            )
        )
    return currency, ledger_money(total), resources


async def costs(deps: Deps, caller: Caller, body: api.CostsQuery) -> api.CostsReport:
    """Charges over a window: total, per resource and per UTC day."""
    principal = caller.require()
    async with deps.uow() as uow:
        subject, project_id, requester = await _owner(uow.session, body)
        require_cost_reader(principal, project_id, requester, _missing(body))
        where = (
            _COLUMN[body.of] == subject,
            charge.c.hour_start >= body.since,
            charge.c.hour_start < body.until,
        )
        currency, total, resources = await ledger_sums(uow.session, *where)
        day = cast(func.timezone("UTC", charge.c.hour_start), Date)
        days = (
            await uow.session.execute(
                select(day, func.sum(charge.c.total_scaled))
                .where(*where)
                .group_by(day)
                .order_by(day)
            )
        ).all()
    return api.CostsReport(
        of=body.of,
        id=subject,
        project_id=project_id,
        since=body.since,
        until=body.until,
        currency=currency,
        total=total,
        resources=resources,
        days=[api.DayCost(day=d, amount=ledger_money(a)) for d, a in days],
    )


# Budgets ---------------------------------------------------------------------------------


async def _budget_list(deps: Deps, where: Any) -> list[api.BudgetPublic]:
    now = utc_now()
    window = deps.settings.forecast_window_days
    async with deps.uow() as uow:
        rows = (
            await uow.session.execute(
                select(budget).where(where).order_by(budget.c.project_id, budget.c.code)
            )
        ).all()
        ids = [row.id for row in rows]
        holds = await holds_of(uow, ids) if ids else {}
        burns = await burn_of(uow, ids, now - timedelta(days=window)) if ids else {}
        notices: dict[UUID, list[Decimal]] = defaultdict(list)
        if ids:
            for n in await uow.session.execute(
                select(budget_notice).where(budget_notice.c.budget_code_id.in_(ids))
            ):
                notices[n.budget_code_id].append(Decimal(n.threshold_percent))
    result = []
    for row in rows:
        held = holds.get(row.id, (Decimal(0), []))[0]
        view = view_of(row, held)

        def money(amount: Decimal, currency: str = row.currency) -> Money:
            return Money(amount=amount.quantize(Decimal("0.01")), currency=currency)

        result.append(
            api.BudgetPublic(
                budget_code_id=row.id,
                project_id=row.project_id,
                code=row.code,
                name=row.name,
                state=row.state,
                funding=money(view.funding),
                charged=money(view.charged),
                held=money(view.held),
                available=money(view.available),
                spent_percent=view.spent_percent.quantize(Decimal("0.01")),
                burn_per_day=money(burns.get(row.id, Decimal(0)) / window),
                runs_out_on=row.runs_out_on,
                valid_from=row.valid_from,
                valid_to=row.valid_to,
                thresholds_percent=sorted(Decimal(str(t)) for t in row.thresholds),
                thresholds_crossed=sorted(notices.get(row.id, [])),
            )
        )
    return result


async def list_budgets(deps: Deps, caller: Caller, body: api.BudgetsQuery) -> api.BudgetList:
    """Budget codes with balance and forecast: of one project, or of every project the caller
    may see (all of them for admins and finance)."""
    principal = caller.require()
    if body.project_id is not None:
        require_budget_reader(principal, body.project_id)
        where = budget.c.project_id == body.project_id
    elif sees_everything(principal):
        where = budget.c.id.isnot(None)
    else:
        where = budget.c.project_id.in_(own_projects(principal))
    return api.BudgetList(budgets=await _budget_list(deps, where))


async def get_budget(deps: Deps, caller: Caller, body: api.BudgetRef) -> api.BudgetPublic:
    """One budget code, by id or code, with balance and forecast."""
    principal = caller.require()
    found = await _budget_list(deps, budget_named(body.budget_code_id))
    if not found:
        raise NotFound("no such budget code", field="budget_code_id")
    require_budget_reader(principal, found[0].project_id, "no such budget code")
    return found[0]


# Invoices --------------------------------------------------------------------------------


async def list_invoices(deps: Deps, caller: Caller, body: api.InvoicesQuery) -> api.InvoiceList:
    """Invoices, newest first, a page at a time."""
    principal = caller.require()
    query = select(invoice).order_by(invoice.c.sequence.desc()).limit(body.limit + 1)
    if body.after is not None:
        if not body.after.isdigit():
            raise Invalid("after: not a cursor this list gave out", field="after")
        query = query.where(invoice.c.sequence < int(body.after))
    project_id = body.project_id
    async with deps.uow() as uow:
        if body.budget_code_id is not None:
            code_id, owner = await find_budget_code(
                uow.session, body.budget_code_id, "budget_code_id"
            )
            if project_id not in (None, owner):
                raise NotFound("no such budget code", field="budget_code_id")
            require_money_reader(principal, owner, "no such budget code")
            project_id = owner
            query = query.where(invoice.c.budget_code_id == code_id)
        require_money_reader(principal, project_id)
        if project_id is not None:
            query = query.where(invoice.c.project_id == project_id)
        rows = (await uow.session.execute(query)).all()
    more = len(rows) > body.limit
    rows = rows[: body.limit]
    return api.InvoiceList(
        invoices=[reply(api.InvoiceSummary, r, invoice_id=r.id) for r in rows],
        next_cursor=str(rows[-1].sequence) if more else None,
    )


async def _readable_invoice(deps: Deps, caller: Caller, invoice_id: UUID) -> InvoiceDocument:
    principal = caller.require()
    async with deps.uow() as uow:
        doc = await load_document(uow.session, invoice_id)
    require_money_reader(principal, doc.project_id, "no such invoice")
    return doc


async def get_invoice(deps: Deps, caller: Caller, body: api.InvoiceRef) -> api.InvoiceDetail:
    """One invoice with its lines."""
    doc = await _readable_invoice(deps, caller, body.invoice_id)
    summary = {name: getattr(doc, name) for name in api.InvoiceSummary.model_fields}
    return api.InvoiceDetail(
        **summary, lines=[api.InvoiceLinePublic(**asdict(line)) for line in doc.lines]
    )


async def invoice_pdf(deps: Deps, caller: Caller, body: api.InvoiceRef) -> api.Document:
    """The invoice as a PDF (base64)."""
    doc = await _readable_invoice(deps, caller, body.invoice_id)
    content = render_pdf(doc, issuer=deps.settings.issuer_name)
    return api.Document(
        filename=f"{doc.number}.pdf",
        media_type="application/pdf",
        content=base64.b64encode(content).decode(),
        encoding="base64",
    )


async def invoice_csv(deps: Deps, caller: Caller, body: api.InvoiceRef) -> api.Document:
    """The invoice's lines as CSV."""
    doc = await _readable_invoice(deps, caller, body.invoice_id)
    return api.Document(
        filename=f"{doc.number}.csv",
        media_type="text/csv",
        content=render_csv(doc).decode(),
        encoding="utf-8",
    )


async def finance_export(deps: Deps, caller: Caller, body: api.PeriodQuery) -> api.Document:
    """Every line of every invoice of a period, per cost centre (budget code), as CSV."""
    require_role(caller.require(), "finance")
    async with deps.uow() as uow:
        rows = (
            await uow.session.execute(
                select(invoice)
                .where(
                    invoice.c.period_start == body.period_start,
                    invoice.c.period_end == body.period_end,
                )
                .order_by(invoice.c.budget_code, invoice.c.sequence)
            )
        ).all()
        lines: dict[UUID, list[Any]] = defaultdict(list)
        if rows:
            for x in await uow.session.execute(
                select(invoice_line)
                .where(invoice_line.c.invoice_id.in_([r.id for r in rows]))
                .order_by(invoice_line.c.invoice_id, invoice_line.c.position)
            ):
                lines[x.invoice_id].append(x)
    export = [
        ExportRow(
            invoice_number=doc.number,
            issued_at=doc.issued_at,
            period_start=doc.period_start,
            period_end=doc.period_end,
            cost_centre=doc.budget_code,
            budget_code_id=doc.budget_code_id,
            project_id=doc.project_id,
            project_name=doc.project_name,
            line=line,
            currency=doc.currency,
        )
        for doc in (document_of(r, lines[r.id]) for r in rows)
        for line in doc.lines
    ]
    start = body.period_start.date().isoformat()
    end = body.period_end.date().isoformat()
    return api.Document(
        filename=f"invoice-lines-{start}-{end}.csv",
        media_type="text/csv",
        content=export_csv(export).decode(),
        encoding="utf-8",
    )


# Runs, deliveries, parked usage ----------------------------------------------------------


def run_public(row: Any) -> api.RunPublic:
    """A run row as the API lists it."""
    return reply(api.RunPublic, row, run_id=row.id)


async def list_runs(deps: Deps, caller: Caller, body: None) -> api.RunList:
    """Billing runs, newest period first (admins and finance)."""
    require_role(caller.require(), "finance")
    async with deps.uow() as uow:
        rows = (
            await uow.session.execute(
                select(billing_run).order_by(billing_run.c.period_start.desc()).limit(500)
            )
        ).all()
    return api.RunList(runs=[run_public(r) for r in rows])


async def list_deliveries(
    deps: Deps, caller: Caller, body: api.DeliveriesQuery
) -> api.DeliveryList:
    """Deliveries with every attempt: of one invoice (its readers), or all (admins, finance)."""
    principal = caller.require()
    query = (
        select(delivery, invoice.c.number, invoice.c.project_id)
        .outerjoin(invoice, invoice.c.id == delivery.c.invoice_id)
        .order_by(delivery.c.created_at.desc(), delivery.c.id)
        .limit(body.limit)
    )
    async with deps.uow() as uow:
        if body.invoice_id is not None:
            owner = await uow.session.scalar(
                select(invoice.c.project_id).where(invoice.c.id == body.invoice_id)
            )
            if owner is None:
                raise NotFound("no such invoice", field="invoice_id")
            require_money_reader(principal, owner, "no such invoice")
            query = query.where(delivery.c.invoice_id == body.invoice_id)
        else:
            require_role(principal, "finance")
        if body.state is not None:
            query = query.where(delivery.c.state == body.state)
        rows = (await uow.session.execute(query)).all()
        attempts: dict[UUID, list[Any]] = defaultdict(list)
        if rows:
            for a in await uow.session.execute(
                select(delivery_attempt)
                .where(delivery_attempt.c.delivery_id.in_([r.id for r in rows]))
                .order_by(delivery_attempt.c.delivery_id, delivery_attempt.c.attempt)
            ):
                attempts[a.delivery_id].append(a)
    return api.DeliveryList(
        deliveries=[
            reply(
                api.DeliveryPublic,
                r,
                delivery_id=r.id,
                invoice_number=r.number,
                attempts=[reply(api.AttemptPublic, a) for a in attempts[r.id]],
            )
            for r in rows
        ]
    )


async def list_parked(deps: Deps, caller: Caller, body: api.ParkedQuery) -> api.ParkedList:
    """Usage that could not be priced yet, and why (admins and finance)."""
    require_role(caller.require(), "finance")
    async with deps.uow() as uow:
        rows = await rating.parked(uow, body.limit)
    return api.ParkedList(
        hours=[
            reply(api.ParkedHour, r, reason_code=r.reason, reason=rating.REASONS[r.reason])
            for r in rows
        ]
    )
