"""What people change in billing: start a billing run, re-send an invoice, register webhook
endpoints, set a project's billing contacts. Each change is audited in the log with who did it.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import httpx
from sqlalchemy import select, update

from compgrid_billing.adapters.tables import account, invoice, project, webhook
from compgrid_billing.adapters.webhooks import new_secret, refused_address, validate_url
from compgrid_billing.domain.invoice import addresses
from compgrid_billing.use_cases import invoicing
from compgrid_billing.use_cases.deps import Deps
from compgrid_billing.use_cases.queries import (
    list_deliveries,
    own_projects,
    reply,
    require_money_reader,
    require_pi_or,
)
from compgrid_events import billing_api as api
from compgrid_events.base import utc_now, uuid7
from compgrid_runtime.access import require_role
from compgrid_runtime.errors import Invalid, NotFound
from compgrid_runtime.logs import get_logger
from compgrid_runtime.rpc import Caller
from compgrid_runtime.tokens import Principal

log = get_logger(__name__)


def _who(caller: Caller, principal: Principal) -> str:
    return f"user:{principal.user_id}" + (
        f" from {caller.client_address}" if caller.client_address else ""
    )


async def start_run(deps: Deps, caller: Caller, body: api.StartRun) -> api.RunStarted:
    """Invoice a closed period now (admins); running a period again issues nothing new."""
    principal = caller.require()
    require_role(principal)
    result = await invoicing.run_period(
        deps, body.period_start, body.period_end, f"user:{principal.user_id}"
    )
    log.info(
        "billing run requested",
        by=_who(caller, principal),
        period_start=body.period_start.isoformat(),
        period_end=body.period_end.isoformat(),
        issued=result.issued_now,
    )
    return reply(api.RunStarted, result.run, run_id=result.run.id, issued_now=result.issued_now)


async def resend(deps: Deps, caller: Caller, body: api.Resend) -> api.DeliveryList:
    """Queue an invoice again (admins and finance): to its usual recipients, or one channel,
    address or endpoint. A webhook re-send carries the same ``webhook-id`` as before."""
    principal = caller.require()
    require_role(principal, "finance")
    if body.email is not None and body.channel == "webhook":
        raise Invalid("an email address is for the email channel", field="email")
    if body.webhook_id is not None and body.channel == "email":
        raise Invalid("an endpoint is for the webhook channel", field="webhook_id")
    async with deps.uow() as uow:
        row = (
            await uow.session.execute(select(invoice).where(invoice.c.id == body.invoice_id))
        ).first()
        if row is None:
            raise NotFound("no such invoice", field="invoice_id")
        if body.webhook_id is not None:
            hook = (
                await uow.session.execute(select(webhook).where(webhook.c.id == body.webhook_id))
            ).first()
            if hook is None or hook.disabled_at is not None:
                raise NotFound("no such webhook endpoint", field="webhook_id")
            if hook.project_id not in (None, row.project_id):
                raise Invalid("that endpoint is another project's", field="webhook_id")
        planned = await invoicing.plan_deliveries(
            deps,
            uow.session,
            [{"id": row.id, "project_id": row.project_id}],
            requested_by=_who(caller, principal),
            channel="webhook" if body.webhook_id else body.channel,
            email=body.email,
            webhook_id=body.webhook_id,
        )
        if planned == 0:
            raise Invalid(
                "the invoice has no recipient for that: no address and no endpoint",
                code="no_recipient",
            )
        await uow.commit()
    log.info("invoice re-sent", by=_who(caller, principal), invoice=str(row.id), planned=planned)
    return await list_deliveries(
        deps, caller, api.DeliveriesQuery(invoice_id=body.invoice_id, state="pending")
    )


def _hook_public(row: Any, secret: str | None = None) -> api.WebhookPublic:
    return reply(api.WebhookPublic, row, event_types=list(row.event_types), secret=secret)


def _require_hook_manager(principal: Principal, project_id: UUID | None) -> None:
    require_pi_or(principal, project_id, "admin")


async def _endpoint_url(deps: Deps, given: str) -> str:
    """The normalised URL of a new endpoint, or Invalid when it may not be one. A host that
    does not resolve (yet) is accepted where internal endpoints are: each send checks again."""
    allow_internal = deps.settings.internal_webhooks_allowed
    try:
        url = validate_url(given, allow_http=deps.settings.http_webhooks_allowed)
        refused = await refused_address(httpx.URL(url).host, allow_internal=allow_internal)
    except ValueError as exc:
        raise Invalid(str(exc), field="url") from None
    except OSError as exc:
        if allow_internal:
            return url
        raise Invalid(f"cannot resolve the host: {exc}", field="url") from None
    if refused is not None:
        raise Invalid(f"the host is (or resolves to) {refused}", field="url")
    return url


async def create_webhook(deps: Deps, caller: Caller, body: api.CreateWebhook) -> api.WebhookPublic:
    """Register an endpoint; the reply carries its signing secret, the only time it is shown."""
    principal = caller.require()
    _require_hook_manager(principal, body.project_id)
    url = await _endpoint_url(deps, body.url)
    unknown = sorted(set(body.event_types) - set(api.WEBHOOK_EVENT_TYPES))
    if unknown:
        raise Invalid(
            f"unknown event type(s) {', '.join(unknown)}; known: "
            + ", ".join(api.WEBHOOK_EVENT_TYPES),
            field="event_types",
        )
    secret = new_secret()
    async with deps.uow() as uow:
        if body.project_id is not None:
            known = await uow.session.scalar(
                select(project.c.id).where(project.c.id == body.project_id)
            )
            if known is None:
                raise NotFound("no such project", field="project_id")
        row = (
            await uow.session.execute(
                webhook.insert()
                .values(
                    id=uuid7(),
                    project_id=body.project_id,
                    url=url,
                    secret=secret,
                    event_types=sorted(set(body.event_types)),
                    created_by=principal.user_id,
                )
                .returning(webhook)
            )
        ).one()
        await uow.commit()
    log.info("webhook endpoint registered", by=_who(caller, principal), webhook=str(row.id))
    return _hook_public(row, secret)


async def list_webhooks(deps: Deps, caller: Caller, body: api.WebhooksQuery) -> api.WebhookList:
    """Endpoints of a project (its PI), or without one every endpoint the caller manages
    (admins: all, PIs: their projects'); secrets are not shown."""
    principal = caller.require()
    query = select(webhook).order_by(webhook.c.created_at, webhook.c.id)
    if body.project_id is not None:
        _require_hook_manager(principal, body.project_id)
        query = query.where(webhook.c.project_id == body.project_id)
    elif not principal.has_role("admin"):
        query = query.where(webhook.c.project_id.in_(own_projects(principal, "pi")))
    async with deps.uow() as uow:
        rows = (await uow.session.execute(query)).all()
    return api.WebhookList(webhooks=[_hook_public(r) for r in rows])


async def delete_webhook(deps: Deps, caller: Caller, body: api.WebhookRef) -> api.WebhookPublic:
    """Disable an endpoint: nothing more is sent to it (its delivery log stays)."""
    principal = caller.require()
    async with deps.uow() as uow:
        row = (
            await uow.session.execute(
                select(webhook).where(webhook.c.id == body.webhook_id).with_for_update()
            )
        ).first()
        if row is None:
            raise NotFound("no such webhook endpoint", field="webhook_id")
        _require_hook_manager(principal, row.project_id)
        if row.disabled_at is None:
            row = (
                await uow.session.execute(
                    update(webhook)
                    .where(webhook.c.id == row.id)
                    .values(disabled_at=utc_now())
                    .returning(webhook)
                )
            ).one()
        await uow.commit()
    log.info("webhook endpoint disabled", by=_who(caller, principal), webhook=str(row.id))
    return _hook_public(row)


async def _contacts(session: Any, project_id: UUID) -> api.Contacts:
    row = (
        await session.execute(
            select(project.c.id, project.c.billing_contacts, account.c.email)
            .select_from(project)
            .outerjoin(account, account.c.id == project.c.pi_user_id)
            .where(project.c.id == project_id)
        )
    ).first()
    if row is None:
        raise NotFound("no such project", field="project_id")
    return api.Contacts(project_id=row.id, pi_email=row.email, emails=list(row.billing_contacts))


async def get_contacts(deps: Deps, caller: Caller, body: api.ProjectRef) -> api.Contacts:
    """Where a project's invoices go by email."""
    require_money_reader(caller.require(), body.project_id)
    async with deps.uow() as uow:
        return await _contacts(uow.session, body.project_id)


async def set_contacts(deps: Deps, caller: Caller, body: api.SetContacts) -> api.Contacts:
    """Set who besides the PI receives the project's invoices (its PI, finance, admins)."""
    principal = caller.require()
    require_money_reader(principal, body.project_id)
    emails = addresses(*body.emails)
    async with deps.uow() as uow:
        changed = await uow.session.execute(
            update(project)
            .where(project.c.id == body.project_id)
            .values(billing_contacts=emails)
            .returning(project.c.id)
        )
        if changed.first() is None:
            raise NotFound("no such project", field="project_id")
        result = await _contacts(uow.session, body.project_id)
        await uow.commit()
    log.info("billing contacts set", by=_who(caller, principal), project=str(body.project_id))
    return result
