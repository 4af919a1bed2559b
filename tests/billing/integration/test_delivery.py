"""Invoice delivery on real servers: mail through an SMTP server (aiosmtpd) and Standard
Webhooks to an HTTP receiver (uvicorn) that verifies every signature with ``standardwebhooks``,
with billing on the run's NATS JetStream and Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any
from uuid import UUID, uuid4

import pytest
import uvicorn
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from compgrid_billing.use_cases.commands import create_webhook, resend, set_contacts
from compgrid_billing.use_cases.deps import Deps
from compgrid_billing.use_cases.invoicing import message_id, run_period
from compgrid_billing.use_cases.queries import list_deliveries
from compgrid_events import billing_api as api
from compgrid_events.billing import InvoiceDelivered
from compgrid_runtime.mail import SmtpMailer, SmtpSettings
from compgrid_runtime.rpc import Caller
from compgrid_runtime.tokens import Principal
from tests.billing.integration.conftest import (
    Outbox,
    Tenant,
    World,
    hour,
    past_day,
    query,
    running_billing,
    wait_for_rows,
)
from tests.harness.servers import Servers
from tests.harness.streams import StreamWatch
from tests.runtime.integration.waiting import wait_until

FAST = {"delivery_backoff_first_s": 0.2, "delivery_backoff_max_s": 0.5}
"""Retries a fraction of a second apart (the delivery loop runs every 0.2 s)."""
GIVE_UP_SOON = {**FAST, "webhook_timeout_s": 0.5, "delivery_retry_for_s": 1.5}
"""Half a second per request, and a delivery fails for good 1.5 s after it was queued."""


def admin() -> Caller:
    """A caller with the admin role."""
    return Caller(principal=Principal(user_id=uuid4(), roles=frozenset({"admin"}), projects={}))


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (right now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- SMTP ---------------------------------------------------------------------------------


@dataclass
class MailServer:
    """An aiosmtpd handler that keeps each accepted message and refuses some recipients."""

    port: int = 0
    refuse: set[str] = field(default_factory=set)
    recipients_offered: list[str] = field(default_factory=list)
    received: list[tuple[list[str], EmailMessage]] = field(default_factory=list)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.recipients_offered.append(address)
        if address.lower() in self.refuse:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        message = message_from_bytes(raw, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.received.append((list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[EmailMessage]:
        """Messages whose envelope named ``address``."""
        return [m for rcpts, m in self.received if address in rcpts]

    def mailer(self) -> SmtpMailer:
        """A billing mailer that sends here."""
        return SmtpMailer(SmtpSettings(host="127.0.0.1", port=self.port, timeout_s=5))


@pytest.fixture
def smtp() -> Iterator[MailServer]:
    """A real SMTP server on 127.0.0.1."""
    server = MailServer(port=free_port())
    controller = Controller(server, hostname="127.0.0.1", port=server.port)
    controller.start()
    try:
        yield server
    finally:
        controller.stop()


def attachments(message: EmailMessage) -> dict[str, bytes]:
    """Attachment file names and their decoded content."""
    found: dict[str, bytes] = {}
    for part in message.iter_attachments():
        content = part.get_payload(decode=True)
        assert isinstance(content, bytes)
        found[str(part.get_filename())] = content
    return found


# -- HTTP receiver ------------------------------------------------------------------------


@dataclass
class Hit:
    """One request that reached the receiver."""

    path: str
    message_id: str
    body: bytes
    verified: dict[str, Any] | None
    """The payload ``standardwebhooks`` returned, or None when the signature did not verify."""
    error: str = ""


@dataclass
class Receiver:
    """Webhook endpoints in the test process.

    ``/slow…`` answers after the test ends, ``/redirect…`` with 307 to ``/moved``; any other
    path verifies the signature with the secret registered for it and answers 204 (400 when
    it does not verify), or 500 while ``fail_first`` for the path is not used up.
    """

    port: int = 0
    secrets: dict[str, str] = field(default_factory=dict)
    fail_first: dict[str, int] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Hit]:
        """Requests to one path."""
        return [h for h in self.hits if h.path == path]

    def app(self) -> Starlette:
        async def handle(request: Request) -> Response:
            path = request.url.path
            body = await request.body()
            headers = dict(request.headers)
            hit = Hit(path, headers.get("webhook-id", ""), body, None)
            self.hits.append(hit)
            if path.startswith("/slow"):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.release.wait(), 10)
                return Response(status_code=204)
            if path.startswith("/redirect"):
                return RedirectResponse(self.url("/moved"), status_code=307)
            secret = self.secrets.get(path)
            if secret is None:
                hit.error = "no endpoint here"
                return PlainTextResponse(hit.error, status_code=404)
            try:
                hit.verified = Webhook(secret).verify(body, headers)
            except WebhookVerificationError as exc:
                hit.error = str(exc)
                return PlainTextResponse(f"signature rejected: {exc}", status_code=400)
            if self.fail_first.get(path, 0) > 0:
                self.fail_first[path] -= 1
                return PlainTextResponse("not ready yet", status_code=500)
            return Response(status_code=204)

        return Starlette(routes=[Route("/{path:path}", handle, methods=["POST"])])


@contextlib.asynccontextmanager
async def receiving(receiver: Receiver, port: int = 0) -> AsyncIterator[Receiver]:
    """Serve the receiver on 127.0.0.1 (on ``port``, or a free one) until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    receiver.port = int(sock.getsockname()[1])
    config = uvicorn.Config(receiver.app(), log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    assert server.started, "the webhook receiver did not start"
    try:
        yield receiver
    finally:
        receiver.release.set()
        server.should_exit = True
        await task
        sock.close()


# -- Billing ------------------------------------------------------------------------------


async def known(real: Servers, tenant: Tenant) -> None:
    """Wait until billing knows the tenant's project and its PI."""
    await wait_for_rows(
        real,
        "SELECT p.id FROM billing.project p JOIN billing.account a ON a.id = p.pi_user_id "
        "WHERE p.id = :p",
        1,
        p=tenant.project_id,
    )


async def invoice_them(world: World, real: Servers, deps: Deps, *tenants: Tenant) -> list[Any]:
    """Record some usage of each tenant and invoice its day; return the invoices (by
    number)."""
    day = past_day(45)
    for tenant in tenants:
        vm = await world.instance(tenant)
        await world.usage(tenant, vm, hour(day, 3))
        await world.usage(tenant, vm, hour(day, 4), seconds=Decimal(1800))
    await wait_for_rows(real, "SELECT id FROM billing.charge", 2 * len(tenants))
    result = await run_period(deps, hour(day), hour(day + timedelta(days=1)), "test")
    assert result.issued_now == len(tenants)
    return await query(real, "SELECT * FROM billing.invoice ORDER BY sequence")


async def hook(deps: Deps, url: str, project_id: UUID | None = None) -> api.WebhookPublic:
    """Register an endpoint for invoices (of one project, or of all)."""
    created = await create_webhook(deps, admin(), api.CreateWebhook(project_id=project_id, url=url))
    assert created.secret is not None
    assert created.secret.startswith("whsec_")
    return created


async def deliveries(deps: Deps, invoice_id: UUID) -> list[api.DeliveryPublic]:
    """The invoice's delivery log, oldest first."""
    found = await list_deliveries(deps, admin(), api.DeliveriesQuery(invoice_id=invoice_id))
    return sorted(found.deliveries, key=lambda d: (d.created_at, str(d.delivery_id)))


async def settled(
    deps: Deps, invoice_id: UUID, count: int, timeout_s: float = 15
) -> list[api.DeliveryPublic]:
    """Wait until ``count`` deliveries of an invoice are delivered or failed; return the log."""
    log: list[api.DeliveryPublic] = []

    async def done() -> bool:
        log[:] = await deliveries(deps, invoice_id)
        return sum(d.state != "pending" for d in log) >= count

    await wait_until(done, timeout_s, f"{count} finished deliveries of {invoice_id}")
    return log


def by_recipient(log: list[api.DeliveryPublic]) -> dict[str, api.DeliveryPublic]:
    """The log keyed by recipient (one delivery each)."""
    keyed = {d.recipient: d for d in log}
    assert len(keyed) == len(log), [d.recipient for d in log]
    return keyed


# -- Tests --------------------------------------------------------------------------------


async def test_an_invoice_is_mailed_to_the_pi_and_the_billing_contacts(
    world: World, clean_billing: Servers, smtp: MailServer
) -> None:
    """One message per address with the PDF and a CSV whose amounts add up to the total."""
    async with (
        running_billing(clean_billing, mailer=smtp.mailer(), **FAST) as (_, deps),
        StreamWatch.of(world.nc, InvoiceDelivered) as watch,
    ):
        tenant = await world.tenant()
        await known(clean_billing, tenant)
        contact = f"accounts-{tenant.code.lower()}@finance.example"
        contacts = await set_contacts(
            deps, admin(), api.SetContacts(project_id=tenant.project_id, emails=[contact])
        )
        assert (contacts.pi_email, contacts.emails) == (tenant.pi_email, [contact])
        [inv] = await invoice_them(world, clean_billing, deps, tenant)
        log = await settled(deps, inv.id, 2)
        events = await watch.wait_settled(
            InvoiceDelivered, where=lambda e: e.invoice_id == inv.id, count=2
        )

    addresses = {tenant.pi_email, contact}
    assert {d.recipient for d in log} == addresses
    for d in log:
        assert (d.channel, d.state, d.invoice_number) == ("email", "delivered", inv.number)
        assert [(a.attempt, a.delivered, a.status) for a in d.attempts] == [(1, True, 250)]
        assert d.requested_by == "billing run"
        assert d.next_attempt_at is None
        assert d.finished_at is not None
    assert sorted((e.recipient, e.channel, e.succeeded, e.attempts) for e in events) == sorted(
        (a, "email", True, 1) for a in addresses
    )

    assert len(smtp.received) == 2
    for address in addresses:
        [message] = smtp.to(address)
        assert message["To"] == address
        assert inv.number in str(message["Subject"])
        files = attachments(message)
        assert set(files) == {f"{inv.number}.pdf", f"{inv.number}.csv"}
        assert files[f"{inv.number}.pdf"].startswith(b"%PDF")
        rows = list(csv.DictReader(io.StringIO(files[f"{inv.number}.csv"].decode())))
        assert rows
        assert {r["invoice_number"] for r in rows} == {inv.number}
        assert sum(Decimal(r["amount"]) for r in rows) == inv.total
        assert inv.total > 0


async def test_webhooks_reach_the_projects_and_the_global_endpoints_signed(
    world: World, clean_billing: Servers
) -> None:
    """Each endpoint gets the invoices it is for, verifiable with its own secret."""
    receiver = Receiver()
    async with (
        receiving(receiver),
        running_billing(clean_billing, **FAST) as (_, deps),
        StreamWatch.of(world.nc, InvoiceDelivered) as watch,
    ):
        mine, other = await world.tenant(), await world.tenant()
        await known(clean_billing, mine)
        await known(clean_billing, other)
        endpoints = {
            "/mine": await hook(deps, receiver.url("/mine"), mine.project_id),
            "/other": await hook(deps, receiver.url("/other"), other.project_id),
            "/all": await hook(deps, receiver.url("/all")),
        }
        for path, created in endpoints.items():
            assert created.secret is not None
            receiver.secrets[path] = created.secret
        invoices = await invoice_them(world, clean_billing, deps, mine, other)
        inv = next(i for i in invoices if i.project_id == mine.project_id)
        inv_other = next(i for i in invoices if i.project_id == other.project_id)
        log = await settled(deps, inv.id, 3)  # the PI's mail, /mine and /all
        log_other = await settled(deps, inv_other.id, 3)
        events = await watch.wait_settled(
            InvoiceDelivered, where=lambda e: e.channel == "webhook", count=4
        )

    hooks = {d.recipient: d for d in log if d.channel == "webhook"}
    assert set(hooks) == {receiver.url("/mine"), receiver.url("/all")}
    assert all(d.state == "delivered" and len(d.attempts) == 1 for d in hooks.values())
    assert receiver.url("/mine") not in {d.recipient for d in log_other}
    assert all(h.verified is not None for h in receiver.hits), [h.error for h in receiver.hits]

    [at_mine] = receiver.at("/mine")
    assert at_mine.message_id == hooks[receiver.url("/mine")].message_id
    assert at_mine.message_id == message_id(inv.id, str(endpoints["/mine"].id))
    assert at_mine.verified == json.loads(at_mine.body)
    body = json.loads(at_mine.body)
    assert body["type"] == "invoice.issued"
    data = body["data"]
    assert (data["invoice_id"], data["number"]) == (str(inv.id), inv.number)
    assert Decimal(data["total"]) == inv.total
    assert data["currency"] == inv.currency
    assert sum(Decimal(x["amount"]) for x in data["lines"]) == inv.total

    # the other project's endpoint gets that project's invoice only; the global one both
    assert [json.loads(h.body)["data"]["number"] for h in receiver.at("/other")] == [
        inv_other.number
    ]
    assert sorted(json.loads(h.body)["data"]["number"] for h in receiver.at("/all")) == sorted(
        [inv.number, inv_other.number]
    )
    at_all = {json.loads(h.body)["data"]["number"]: h for h in receiver.at("/all")}
    assert at_all[inv.number].message_id == hooks[receiver.url("/all")].message_id
    assert at_all[inv.number].message_id != at_mine.message_id
    assert sorted((str(e.invoice_id), e.recipient) for e in events if e.succeeded) == sorted(
        [
            (str(inv.id), receiver.url("/mine")),
            (str(inv.id), receiver.url("/all")),
            (str(inv_other.id), receiver.url("/other")),
            (str(inv_other.id), receiver.url("/all")),
        ]
    )


async def test_a_receiver_that_was_down_gets_the_invoice_with_the_same_webhook_id(
    world: World, clean_billing: Servers
) -> None:
    """A refused connection and 500s are retried; every attempt carries one webhook-id."""
    down_port = free_port()
    late = Receiver(port=down_port)
    flaky = Receiver(fail_first={"/flaky": 2})
    async with (
        receiving(flaky),
        running_billing(clean_billing, **FAST) as (_, deps),
        StreamWatch.of(world.nc, InvoiceDelivered) as watch,
    ):
        tenant = await world.tenant()
        await known(clean_billing, tenant)
        down = await hook(deps, late.url("/late"), tenant.project_id)
        shaky = await hook(deps, flaky.url("/flaky"))
        assert down.secret is not None
        assert shaky.secret is not None
        late.secrets["/late"] = down.secret
        flaky.secrets["/flaky"] = shaky.secret
        [inv] = await invoice_them(world, clean_billing, deps, tenant)
        await wait_for_rows(
            clean_billing,
            "SELECT a.id FROM billing.delivery_attempt a JOIN billing.delivery d "
            "ON d.id = a.delivery_id WHERE d.recipient = :url",
            2,
            url=late.url("/late"),
        )
        async with receiving(late, port=down_port):
            log = await settled(deps, inv.id, 3)
        events = await watch.wait_settled(
            InvoiceDelivered, where=lambda e: e.invoice_id == inv.id, count=3
        )

    keyed = by_recipient(log)
    came_back = keyed[late.url("/late")]
    assert came_back.state == "delivered"
    assert len(came_back.attempts) >= 3
    *refused, last = came_back.attempts
    assert [(a.delivered, a.status, a.detail) for a in refused] == [
        (False, None, "connection refused")
    ] * len(refused)
    assert (last.delivered, last.status, last.detail) == (True, 204, "HTTP 204")
    assert [a.attempt for a in came_back.attempts] == list(range(1, len(came_back.attempts) + 1))
    [at_late] = late.hits
    assert at_late.message_id == came_back.message_id
    assert at_late.verified is not None
    assert at_late.verified["data"]["number"] == inv.number

    recovered = keyed[flaky.url("/flaky")]
    assert recovered.state == "delivered"
    assert [(a.attempt, a.delivered, a.status, a.detail) for a in recovered.attempts] == [
        (1, False, 500, "HTTP 500: not ready yet"),
        (2, False, 500, "HTTP 500: not ready yet"),
        (3, True, 204, "HTTP 204"),
    ]
    assert len(flaky.hits) == 3
    assert {h.message_id for h in flaky.hits} == {recovered.message_id}
    assert all(h.verified is not None for h in flaky.hits)
    assert len({h.body for h in flaky.hits}) == 1

    assert sorted((e.recipient, e.succeeded, e.attempts) for e in events) == sorted(
        [
            (tenant.pi_email, True, 1),
            (late.url("/late"), True, len(came_back.attempts)),
            (flaky.url("/flaky"), True, 3),
        ]
    )


async def test_timeouts_and_redirects_are_retried_then_the_delivery_fails(
    world: World, clean_billing: Servers
) -> None:
    """Each attempt is logged with why it failed; past the retry window the delivery fails
    and that is published once.

    The endpoints get the invoice by a re-send once the mail has gone: rendering the mail's
    PDF blocks the event loop long enough to eat into a 0.5 s timeout of the same round.
    """
    receiver = Receiver()
    async with (
        receiving(receiver),
        running_billing(clean_billing, **GIVE_UP_SOON) as (_, deps),
        StreamWatch.of(world.nc, InvoiceDelivered) as watch,
    ):
        tenant = await world.tenant()
        await known(clean_billing, tenant)
        [inv] = await invoice_them(world, clean_billing, deps, tenant)
        [mail] = await settled(deps, inv.id, 1)
        assert (mail.recipient, mail.state) == (tenant.pi_email, "delivered")
        slow = await hook(deps, receiver.url("/slow"), tenant.project_id)
        moved = await hook(deps, receiver.url("/redirect"))
        assert slow.secret is not None
        assert moved.secret is not None
        receiver.secrets["/moved"] = moved.secret
        queued = await resend(deps, admin(), api.Resend(invoice_id=inv.id, channel="webhook"))
        assert {d.recipient for d in queued.deliveries} == {
            receiver.url("/slow"),
            receiver.url("/redirect"),
        }
        log = await settled(deps, inv.id, 3)
        events = await watch.wait_settled(
            InvoiceDelivered,
            where=lambda e: e.invoice_id == inv.id and e.channel == "webhook",
            count=2,
            settle_s=1.0,
        )

    keyed = by_recipient(log)
    assert keyed[tenant.pi_email].state == "delivered"
    timed_out = keyed[receiver.url("/slow")]
    redirected = keyed[receiver.url("/redirect")]
    for d in (timed_out, redirected):
        assert d.state == "failed"
        assert d.next_attempt_at is None
        assert d.finished_at is not None
        assert len(d.attempts) >= 2  # retried before giving up
        assert not any(a.delivered for a in d.attempts)
        assert d.finished_at <= d.give_up_at + timedelta(seconds=1)
    assert {(a.status, a.detail) for a in timed_out.attempts} == {(None, "timed out after 0.5 s")}
    assert all(400 <= a.duration_ms < 3000 for a in timed_out.attempts)
    assert {(a.status, a.detail) for a in redirected.attempts} == {
        (307, f"HTTP 307: redirect to {receiver.url('/moved')} not followed")
    }
    assert len(receiver.at("/slow")) == len(timed_out.attempts)
    assert len(receiver.at("/redirect")) == len(redirected.attempts)
    assert receiver.at("/moved") == []
    assert {h.message_id for h in receiver.at("/slow")} == {timed_out.message_id}

    assert [e.succeeded for e in events] == [False, False]  # once per delivery
    assert sorted((e.recipient, e.channel, e.attempts) for e in events) == sorted(
        [
            (receiver.url("/slow"), "webhook", len(timed_out.attempts)),
            (receiver.url("/redirect"), "webhook", len(redirected.attempts)),
        ]
    )
    assert {e.detail for e in events} == {timed_out.last_detail, redirected.last_detail}


async def test_a_refused_mailbox_fails_at_once_and_the_other_address_still_gets_the_invoice(
    world: World, clean_billing: Servers, smtp: MailServer
) -> None:
    """A 5xx refusal of a recipient is final after one attempt, with the server's words."""
    async with (
        running_billing(clean_billing, mailer=smtp.mailer(), **FAST) as (_, deps),
        StreamWatch.of(world.nc, InvoiceDelivered) as watch,
    ):
        tenant = await world.tenant()
        await known(clean_billing, tenant)
        gone = f"left-{tenant.code.lower()}@finance.example"
        smtp.refuse.add(gone)
        await set_contacts(
            deps, admin(), api.SetContacts(project_id=tenant.project_id, emails=[gone])
        )
        [inv] = await invoice_them(world, clean_billing, deps, tenant)
        await settled(deps, inv.id, 2)
        events = await watch.wait_settled(
            InvoiceDelivered, where=lambda e: e.invoice_id == inv.id, count=2, settle_s=1.0
        )
        log = await deliveries(deps, inv.id)  # several delivery rounds later

    keyed = by_recipient(log)
    refused = keyed[gone]
    assert refused.state == "failed"
    [attempt] = refused.attempts
    assert (attempt.attempt, attempt.delivered, attempt.status) == (1, False, 550)
    assert "mailbox unavailable" in attempt.detail
    assert refused.last_detail == attempt.detail
    assert smtp.recipients_offered.count(gone) == 1
    assert smtp.to(gone) == []

    delivered = keyed[tenant.pi_email]
    assert delivered.state == "delivered"
    assert len(delivered.attempts) == 1
    [message] = smtp.to(tenant.pi_email)
    assert inv.number in str(message["Subject"])

    assert sorted((e.recipient, e.succeeded, e.attempts) for e in events) == sorted(
        [(gone, False, 1), (tenant.pi_email, True, 1)]
    )
    assert "mailbox unavailable" in next(e.detail for e in events if not e.succeeded)


async def test_a_resent_webhook_is_delivered_again_with_the_same_webhook_id(
    world: World, clean_billing: Servers
) -> None:
    """An admin's re-send to one endpoint is a new delivery carrying the first one's id."""
    receiver = Receiver()
    outbox = Outbox()
    async with (
        receiving(receiver),
        running_billing(clean_billing, mailer=outbox, **FAST) as (_, deps),
        StreamWatch.of(world.nc, InvoiceDelivered) as watch,
    ):
        tenant = await world.tenant()
        await known(clean_billing, tenant)
        endpoint = await hook(deps, receiver.url("/books"), tenant.project_id)
        assert endpoint.secret is not None
        receiver.secrets["/books"] = endpoint.secret
        [inv] = await invoice_them(world, clean_billing, deps, tenant)
        [first] = [
            d for d in await settled(deps, inv.id, 2) if d.channel == "webhook"
        ]  # and the PI's mail
        assert first.state == "delivered"

        queued = await resend(deps, admin(), api.Resend(invoice_id=inv.id, webhook_id=endpoint.id))
        [again] = queued.deliveries
        assert again.delivery_id != first.delivery_id
        assert (again.state, again.channel, again.recipient) == (
            "pending",
            "webhook",
            receiver.url("/books"),
        )
        log = await settled(deps, inv.id, 3)
        events = await watch.wait_settled(
            InvoiceDelivered, where=lambda e: e.channel == "webhook", count=2
        )

    resent = next(d for d in log if d.delivery_id == again.delivery_id)
    assert resent.state == "delivered"
    assert len(resent.attempts) == 1
    assert resent.message_id == first.message_id
    assert resent.requested_by.startswith("user:")
    assert first.requested_by == "billing run"
    assert len(log) == 3  # the PI's mail is not sent again
    assert len(outbox.sent) == 1

    hits = receiver.at("/books")
    assert len(hits) == 2
    assert [h.message_id for h in hits] == [first.message_id, first.message_id]
    assert all(h.verified is not None for h in hits)
    assert hits[0].body == hits[1].body
    assert [(e.succeeded, e.attempts) for e in events] == [(True, 1), (True, 1)]
