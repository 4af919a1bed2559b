"""Usage (``rpc.metering``) and money (``rpc.billing``): costs, budgets and forecasts,
invoices as JSON, PDF and CSV, their delivery, webhooks, billing runs and the finance export."""

from __future__ import annotations

import base64
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from compgrid_events import billing_api as api
from compgrid_events import metering_api
from compgrid_gateway.backend import CtxDep
from compgrid_gateway.routes.common import (
    BudgetCodePath,
    accepted,
    body_of,
    created,
    json_response,
    problems,
    without,
)

router = APIRouter(responses=problems())

ResendTo = without(api.Resend, "invoice_id", name="ResendTo")


def _file(document: dict[str, str], disposition: str = "attachment") -> Response:
    content = document["content"]
    data = base64.b64decode(content) if document["encoding"] == "base64" else content.encode()
    filename = document["filename"].replace('"', "")
    return Response(
        data,
        media_type=document["media_type"],
        headers={"Content-Disposition": f'{disposition}; filename="{filename}"'},
    )


@router.get("/usage", tags=["usage"], response_model=metering_api.UsageReport)
async def usage(ctx: CtxDep, params: Annotated[metering_api.UsageQuery, Query()]) -> Response:
    """Usage of an instance, project or budget code (by id or code), hour by hour (live for
    open hours)."""
    return json_response(await ctx.relay("metering", "usage.get", params))


@router.get("/costs", tags=["costs"], response_model=api.CostsReport)
async def costs(ctx: CtxDep, params: Annotated[api.CostsQuery, Query()]) -> Response:
    """Priced charges of an instance, project or budget code (by id or code): total, per
    resource, per day."""
    return json_response(await ctx.relay("billing", "costs.get", params))


@router.get("/budgets", tags=["budgets"], response_model=api.BudgetList)
async def list_budgets(ctx: CtxDep, params: Annotated[api.BudgetsQuery, Query()]) -> Response:
    """Budget codes with funding, charges, holds, what is left and when it runs out (without
    ``project_id``: of every project the caller is in; admins and finance: all)."""
    return json_response(await ctx.relay("billing", "budgets.list", params))


@router.get("/budgets/{budget_code_id}", tags=["budgets"], response_model=api.BudgetPublic)
async def get_budget(ctx: CtxDep, budget_code_id: BudgetCodePath) -> Response:
    """One budget code's money and forecast (by id or code)."""
    payload = {"budget_code_id": budget_code_id}
    return json_response(await ctx.relay("billing", "budgets.get", payload))


@router.get("/invoices", tags=["invoices"], response_model=api.InvoiceList)
async def list_invoices(ctx: CtxDep, params: Annotated[api.InvoicesQuery, Query()]) -> Response:
    """Invoices, newest first, of a project or budget code (by id or code; all, for admins
    and finance)."""
    return json_response(await ctx.relay("billing", "invoices.list", params))


@router.get("/invoices/{invoice_id}", tags=["invoices"], response_model=api.InvoiceDetail)
async def get_invoice(ctx: CtxDep, invoice_id: UUID) -> Response:
    """An invoice with its lines."""
    payload = {"invoice_id": str(invoice_id)}
    return json_response(await ctx.relay("billing", "invoices.get", payload))


_PDF: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/pdf": {"schema": {"type": "string", "format": "binary"}}}}
}
_CSV: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}}}
}


@router.get(
    "/invoices/{invoice_id}/pdf", tags=["invoices"], response_class=Response, responses=_PDF
)
async def invoice_pdf(ctx: CtxDep, invoice_id: UUID) -> Response:
    """The invoice as a PDF."""
    payload = {"invoice_id": str(invoice_id)}
    return _file(await ctx.ask("billing", "invoices.pdf", payload, slow=True))


@router.get(
    "/invoices/{invoice_id}/csv", tags=["invoices"], response_class=Response, responses=_CSV
)
async def invoice_csv(ctx: CtxDep, invoice_id: UUID) -> Response:
    """The invoice's lines as CSV."""
    payload = {"invoice_id": str(invoice_id)}
    return _file(await ctx.ask("billing", "invoices.csv", payload, slow=True))


@router.post(
    "/invoices/{invoice_id}/resend",
    tags=["invoices"],
    status_code=202,
    response_model=api.DeliveryList,
)
async def resend_invoice(
    request: Request,
    ctx: CtxDep,
    invoice_id: UUID,
    body: ResendTo | None = None,  # type: ignore[valid-type]
) -> Response:
    """Send an invoice again (to its recipients, one channel, one address or endpoint)."""
    payload = body_of(body, invoice_id=invoice_id)
    sent = await ctx.ask("billing", "invoices.resend", payload)
    return accepted(request, sent, f"/invoices/{invoice_id}/deliveries")


@router.get("/invoices/{invoice_id}/deliveries", tags=["invoices"], response_model=api.DeliveryList)
async def invoice_deliveries(ctx: CtxDep, invoice_id: UUID) -> Response:
    """Every delivery of an invoice with every attempt."""
    payload = {"invoice_id": str(invoice_id)}
    return json_response(await ctx.relay("billing", "deliveries.list", payload))


@router.get("/deliveries", tags=["invoices"], response_model=api.DeliveryList)
async def list_deliveries(ctx: CtxDep, params: Annotated[api.DeliveriesQuery, Query()]) -> Response:
    """Deliveries in a state, newest first (admins and finance)."""
    return json_response(await ctx.relay("billing", "deliveries.list", params))


@router.get("/webhooks", tags=["webhooks"], response_model=api.WebhookList)
async def list_webhooks(ctx: CtxDep, params: Annotated[api.WebhooksQuery, Query()]) -> Response:
    """Webhook endpoints of a project, or of every project the caller is PI of (admins: all,
    the global ones too)."""
    return json_response(await ctx.relay("billing", "webhooks.list", params))


@router.post("/webhooks", tags=["webhooks"], status_code=201, response_model=api.WebhookPublic)
async def create_webhook(request: Request, ctx: CtxDep, body: api.CreateWebhook) -> Response:
    """Register an endpoint; the signing secret is in this answer only."""
    hook = await ctx.ask("billing", "webhooks.create", body)
    return created(request, hook, f"/webhooks/{hook['id']}")


@router.delete("/webhooks/{webhook_id}", tags=["webhooks"], response_model=api.WebhookPublic)
async def delete_webhook(ctx: CtxDep, webhook_id: UUID) -> Response:
    """Disable an endpoint (its past deliveries stay on record)."""
    payload = {"webhook_id": str(webhook_id)}
    return json_response(await ctx.relay("billing", "webhooks.delete", payload))


@router.get("/billing/runs", tags=["billing"], response_model=api.RunList)
async def list_runs(ctx: CtxDep) -> Response:
    """Billing runs, newest period first (admins and finance)."""
    return json_response(await ctx.relay("billing", "runs.list"))


@router.post("/billing/runs", tags=["billing"], response_model=api.RunStarted)
async def start_run(ctx: CtxDep, body: api.StartRun) -> Response:
    """Invoice a closed period now (admins); running it again issues nothing twice."""
    return json_response(await ctx.relay("billing", "runs.start", body, slow=True))


@router.get("/billing/export", tags=["billing"], response_class=Response, responses=_CSV)
async def finance_export(ctx: CtxDep, params: Annotated[api.PeriodQuery, Query()]) -> Response:
    """Every invoice line of a period as CSV, for the finance system (admins and finance)."""
    return _file(await ctx.ask("billing", "export.get", params, slow=True))


@router.get("/billing/parked", tags=["billing"], response_model=api.ParkedList)
async def list_parked(ctx: CtxDep, params: Annotated[api.ParkedQuery, Query()]) -> Response:
    """Usage that could not be priced yet, and why (admins and finance)."""
    return json_response(await ctx.relay("billing", "parked.list", params))
