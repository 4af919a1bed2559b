"""Delivering invoices (email with the PDF and CSV attached, and signed webhooks) and budget
events (signed webhooks, see ``announcements``).

Deliveries are rows, queued in the transaction that issued the invoice (or by a re-send).
Every ``delivery_interval_s`` a process claims the due ones (``SKIP LOCKED``, pushing their
next attempt past the time a send can take, so a process killed mid-send leaves them to be
claimed again), sends each, and records the attempt. A failed attempt is retried with
exponential backoff until ``give_up_at`` (27 hours by default); a webhook keeps its
``webhook-id`` on every attempt, so a receiver that was down gets each invoice once it is back
and can tell repeats apart. A mail server's permanent refusal (5xx) is final at once. An invoice's
outcome — delivered, or failed for good — is published as ``InvoiceDelivered``.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import aiosmtplib
from sqlalchemy import func, insert, select, update

from compgrid_billing.adapters.tables import delivery, delivery_attempt, invoice, invoice_line
from compgrid_billing.adapters.tables import webhook as webhook_table
from compgrid_billing.adapters.webhooks import Outcome
from compgrid_billing.domain.documents import render_csv, render_pdf
from compgrid_billing.domain.invoice import InvoiceDocument, InvoiceLine, LineKind, Resource
from compgrid_billing.use_cases.deps import Deps
from compgrid_events.base import utc_now
from compgrid_events.billing import InvoiceDelivered
from compgrid_events.billing_api import INVOICE_ISSUED
from compgrid_runtime.errors import NotFound
from compgrid_runtime.logs import get_logger
from compgrid_runtime.mail import Attachment, Mail

log = get_logger(__name__)

CLAIM_MARGIN_S = 60.0
"""A claimed delivery is due again this long after the send could have timed out."""


def document_of(row: Any, lines: list[Any]) -> InvoiceDocument:
    """The printable invoice of a stored one."""
    return InvoiceDocument(
        invoice_id=row.id,
        number=row.number,
        issued_at=row.issued_at,
        period_start=row.period_start,
        period_end=row.period_end,
        project_id=row.project_id,
        project_name=row.project_name,
        budget_code_id=row.budget_code_id,
        budget_code=row.budget_code,
        budget_name=row.budget_name,
        currency=row.currency,
        subtotal=row.subtotal,
        adjustments=row.adjustments,
        total=row.total,
        pi_name=row.pi_name,
        pi_email=row.pi_email,
        lines=tuple(
            InvoiceLine(
                position=line.position,
                kind=LineKind(line.kind),
                instance_id=line.instance_id,
                instance_name=line.instance_name,
                resource=Resource(line.resource),
                model=line.model,
                quantity=line.quantity,
                unit=line.unit,
                rate=line.rate,
                amount=line.amount,
            )
            for line in lines
        ),
    )


async def load_document(session: Any, invoice_id: UUID) -> InvoiceDocument:
    """Read one issued invoice with its lines."""
    row = (await session.execute(select(invoice).where(invoice.c.id == invoice_id))).first()
    if row is None:
        raise NotFound("no such invoice", field="invoice_id")
    lines = (
        await session.execute(
            select(invoice_line)
            .where(invoice_line.c.invoice_id == invoice_id)
            .order_by(invoice_line.c.position)
        )
    ).all()
    return document_of(row, lines)


def payload(doc: InvoiceDocument, at: datetime) -> bytes:
    """The webhook body of an issued invoice (Standard Webhooks' type/timestamp/data)."""
    data = {
        "invoice_id": str(doc.invoice_id),
        "number": doc.number,
        "project_id": str(doc.project_id),
        "project_name": doc.project_name,
        "budget_code_id": str(doc.budget_code_id),
        "budget_code": doc.budget_code,
        "period_start": doc.period_start.isoformat(),
        "period_end": doc.period_end.isoformat(),
        "issued_at": doc.issued_at.isoformat(),
        "currency": doc.currency,
        "subtotal": str(doc.subtotal),
        "adjustments": str(doc.adjustments),
        "total": str(doc.total),
        "lines": [
            {
                "position": line.position,
                "kind": line.kind.value,
                "instance_id": str(line.instance_id),
                "instance_name": line.instance_name,
                "resource": line.resource.value,
                "model": line.model,
                "quantity": str(line.quantity),
                "unit": line.unit,
                "rate": None if line.rate is None else str(line.rate),
                "amount": str(line.amount),
            }
            for line in doc.lines
        ],
    }
    body = {"type": INVOICE_ISSUED, "timestamp": at.isoformat(), "data": data}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def attachments(doc: InvoiceDocument, issuer: str) -> tuple[Attachment, ...]:
    """The invoice's PDF and CSV (the PDF takes a while: call it off the event loop)."""
    return (
        Attachment(f"{doc.number}.pdf", render_pdf(doc, issuer=issuer), "application/pdf"),
        Attachment(f"{doc.number}.csv", render_csv(doc), "text/csv"),
    )


def invoice_mail(doc: InvoiceDocument, to: str, issuer: str, files: tuple[Attachment, ...]) -> Mail:
    """The invoice as a mail with its PDF and CSV attached."""
    last_day = (doc.period_end - timedelta(seconds=1)).date()
    text_body = (
        f"Invoice {doc.number} for {doc.project_name}, budget code {doc.budget_code}\n"
        f"Period: {doc.period_start.date().isoformat()} to {last_day.isoformat()} (UTC)\n"
        f"Total: {doc.total} {doc.currency}"
        + (
            f" (including {doc.adjustments} {doc.currency} of corrections)"
            if doc.adjustments
            else ""
        )
        + f"\n\nThe invoice is attached as PDF, its lines as CSV.\n\n{issuer}\n"
    )
    return Mail(
        to=(to,),
        subject=f"{issuer} invoice {doc.number}: {doc.project_name} ({doc.budget_code})",
        text=text_body,
        attachments=files,
    )


async def _send_mail(
    deps: Deps, doc: InvoiceDocument, to: str, files: tuple[Attachment, ...]
) -> Outcome:
    started = time.monotonic()

    def done(delivered: bool, detail: str, retryable: bool, status: int | None = None) -> Outcome:
        elapsed = int((time.monotonic() - started) * 1000)
        return Outcome(delivered, status, detail[:500], retryable, elapsed)

    try:
        await deps.mailer.send(invoice_mail(doc, to, deps.settings.issuer_name, files))
    except aiosmtplib.SMTPRecipientsRefused as exc:
        codes = [r.code for r in exc.recipients]
        code = codes[0] if codes else None
        permanent = all(c >= 500 for c in codes) if codes else False
        return done(False, f"recipient refused: {exc}", not permanent, code)
    except aiosmtplib.SMTPResponseException as exc:
        return done(False, f"SMTP {exc.code}: {exc.message}", exc.code < 500, exc.code)
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        return done(False, f"mail server unreachable: {exc!r}", True)
    return done(True, "accepted by the mail server", False, 250)


async def _send_webhook(deps: Deps, doc: InvoiceDocument | None, row: Any, secret: str) -> Outcome:
    body = row.payload.encode() if doc is None else payload(doc, doc.issued_at)
    return await deps.webhooks.post(row.recipient, secret, row.message_id, body)


def backoff(deps: Deps, attempts: int) -> timedelta:
    """The wait before attempt ``attempts`` + 1: doubling from the first wait, capped."""
    s = deps.settings
    return timedelta(
        seconds=min(s.delivery_backoff_first_s * 2 ** (attempts - 1), s.delivery_backoff_max_s)
    )


async def _claim(deps: Deps, now: datetime) -> list[Any]:
    hold = timedelta(seconds=deps.settings.webhook_timeout_s + CLAIM_MARGIN_S)
    async with deps.uow() as uow:
        due = (
            select(delivery.c.id)
            .where(delivery.c.state == "pending", delivery.c.next_attempt_at <= now)
            .order_by(delivery.c.next_attempt_at)
            .limit(deps.settings.delivery_batch)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        rows = (
            await uow.session.execute(
                update(delivery)
                .where(delivery.c.id.in_(due))
                .values(next_attempt_at=now + hold)
                .returning(delivery)
            )
        ).all()
        await uow.commit()
    return list(rows)


async def deliver_due(deps: Deps, now: datetime | None = None) -> int:
    """Send what is due; return how many attempts were made."""
    now = now or utc_now()
    rows = await _claim(deps, now)
    if not rows:
        return 0
    async with deps.uow() as uow:
        invoices = {r.invoice_id for r in rows if r.invoice_id is not None}
        docs = {i: await load_document(uow.session, i) for i in invoices}
        secrets = {
            h.id: h.secret
            for h in await uow.session.execute(
                select(webhook_table.c.id, webhook_table.c.secret).where(
                    webhook_table.c.id.in_([r.webhook_id for r in rows if r.webhook_id])
                )
            )
        }

    # Documents are rendered once per invoice, in a thread: a PDF takes long enough to stall
    # the event loop (and time out the webhooks sent alongside).
    files = {
        invoice_id: await asyncio.to_thread(
            attachments, docs[invoice_id], deps.settings.issuer_name
        )
        for invoice_id in {r.invoice_id for r in rows if r.channel == "email"}
    }

    async def attempt(row: Any) -> tuple[Any, Outcome]:
        doc = docs.get(row.invoice_id)
        if row.channel == "email" and doc is not None:
            return row, await _send_mail(deps, doc, row.recipient, files[row.invoice_id])
        secret = secrets.get(row.webhook_id)
        if secret is None:
            return row, Outcome(False, None, "the endpoint was deleted", False, 0)
        return row, await _send_webhook(deps, doc, row, secret)

    results = await asyncio.gather(*(attempt(row) for row in rows))
    async with deps.uow() as uow:
        for row, outcome in results:
            await _record(deps, uow, row, outcome)
        await uow.commit()
    return len(results)


async def _record(deps: Deps, uow: Any, row: Any, outcome: Outcome) -> None:
    """Log one attempt and move the delivery on: delivered, retried later, or failed."""
    attempts = row.attempts + 1
    now = utc_now()
    await uow.session.execute(
        insert(delivery_attempt).values(
            delivery_id=row.id,
            attempt=attempts,
            delivered=outcome.delivered,
            status=outcome.status,
            detail=outcome.detail,
            duration_ms=outcome.duration_ms,
        )
    )
    values: dict[str, Any] = {"attempts": attempts, "last_detail": outcome.detail}
    next_at = now + backoff(deps, attempts)
    if outcome.delivered:
        values |= {"state": "delivered", "next_attempt_at": None, "finished_at": func.now()}
    elif not outcome.retryable or next_at > row.give_up_at:
        values |= {"state": "failed", "next_attempt_at": None, "finished_at": func.now()}
    else:
        values["next_attempt_at"] = next_at
    await uow.session.execute(update(delivery).where(delivery.c.id == row.id).values(**values))
    if "state" in values and row.invoice_id is None:
        log.info(
            "webhook delivery finished" if outcome.delivered else "webhook delivery failed",
            type=row.event_type,
            attempts=attempts,
            detail=outcome.detail,
        )
    elif "state" in values:
        uow.emit(
            InvoiceDelivered(
                invoice_id=row.invoice_id,
                channel=row.channel,
                recipient=row.recipient,
                succeeded=outcome.delivered,
                attempts=attempts,
                detail=outcome.detail[:500],
            )
        )
        log.info(
            "invoice delivery finished" if outcome.delivered else "invoice delivery failed",
            invoice=str(row.invoice_id),
            channel=row.channel,
            attempts=attempts,
            detail=outcome.detail,
        )


async def deliver_forever(deps: Deps) -> None:
    """Send due deliveries every ``delivery_interval_s`` until cancelled (then close the
    webhook sender's connections)."""
    try:
        while True:
            try:
                while await deliver_due(deps) >= deps.settings.delivery_batch:
                    pass  # a full batch: more may be due
            except Exception as exc:  # tried again next time
                log.warning("delivery round failed", error=repr(exc))
            await asyncio.sleep(deps.settings.delivery_interval_s)
    finally:
        await deps.webhooks.aclose()
