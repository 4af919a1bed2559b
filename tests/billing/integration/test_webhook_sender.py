"""Outgoing webhooks against a real HTTP receiver that checks them with ``standardwebhooks``."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
import uvicorn
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from compgrid_billing.adapters.webhooks import (
    SNIPPET_CHARS,
    WebhookSender,
    internal,
    metadata,
    new_secret,
    sign,
    validate_url,
)

# The example published in the Standard Webhooks / Svix documentation.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@dataclass
class Received:
    """One request the receiver accepted after verifying its signature."""

    message_id: str
    body: bytes
    headers: dict[str, str]


@dataclass
class Receiver:
    """A webhook endpoint in the test process; its /ok route verifies every signature."""

    secret: str
    base_url: str = ""
    paths: list[str] = field(default_factory=list)
    accepted: list[Received] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return self.base_url + path

    def reset(self) -> None:
        self.paths.clear()
        self.accepted.clear()
        self.rejected.clear()

    def app(self) -> Starlette:
        async def ok(request: Request) -> Response:
            self.paths.append(request.url.path)
            body = await request.body()
            headers = dict(request.headers)
            try:
                Webhook(self.secret).verify(body, headers)
            except WebhookVerificationError as exc:
                self.rejected.append(str(exc))
                return PlainTextResponse(f"signature rejected: {exc}", status_code=400)
            self.accepted.append(Received(headers["webhook-id"], body, headers))
            return Response(status_code=204)

        async def fail(request: Request) -> Response:
            self.paths.append(request.url.path)
            return PlainTextResponse("receiver exploded\n  while filing", status_code=500)

        async def fail_long(request: Request) -> Response:
            self.paths.append(request.url.path)
            return PlainTextResponse("x" * 10_000, status_code=503)

        async def slow(request: Request) -> Response:
            self.paths.append(request.url.path)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), 10)
            return Response(status_code=204)

        async def redirect(request: Request) -> Response:
            self.paths.append(request.url.path)
            return RedirectResponse(self.url("/ok"), status_code=307)

        return Starlette(
            routes=[
                Route("/ok", ok, methods=["POST"]),
                Route("/fail", fail, methods=["POST"]),
                Route("/fail-long", fail_long, methods=["POST"]),
                Route("/slow", slow, methods=["POST"]),
                Route("/redirect", redirect, methods=["POST"]),
            ]
        )


@pytest.fixture(scope="module")
async def _receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver(secret=new_secret())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    receiver.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(receiver.app(), log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    assert server.started, "the webhook receiver did not start"
    yield receiver
    receiver.release.set()
    server.should_exit = True
    await task
    sock.close()


@pytest.fixture
def receiver(_receiver: Receiver) -> Receiver:
    _receiver.reset()
    return _receiver


@pytest.fixture
async def sender() -> AsyncIterator[WebhookSender]:
    async with WebhookSender(timeout_s=5.0) as webhook_sender:
        yield webhook_sender


def invoice_body() -> bytes:
    event = {"type": "invoice.issued", "invoice": "INV-2025-0042", "grant": "Größe €"}
    return json.dumps(event, ensure_ascii=False).encode()


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_delivers_a_webhook_the_library_verifies(
    receiver: Receiver, sender: WebhookSender
) -> None:
    body = invoice_body()
    before = int(time.time())

    outcome = await sender.post(receiver.url("/ok"), receiver.secret, "msg_0001", body)

    assert outcome.delivered, outcome
    assert (outcome.status, outcome.retryable, outcome.detail) == (204, False, "HTTP 204")
    assert outcome.duration_ms >= 0
    assert receiver.rejected == []
    assert [(r.message_id, r.body) for r in receiver.accepted] == [("msg_0001", body)]
    headers = receiver.accepted[0].headers
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == "CompGrid-Webhooks/1"
    timestamp = int(headers["webhook-timestamp"])
    assert before <= timestamp <= int(time.time())
    assert headers["webhook-signature"] == sign(receiver.secret, "msg_0001", timestamp, body)


async def test_signatures_are_really_checked(receiver: Receiver, sender: WebhookSender) -> None:
    body = invoice_body()
    await sender.post(receiver.url("/ok"), receiver.secret, "msg_0002", body)
    headers = receiver.accepted[0].headers

    assert Webhook(receiver.secret).verify(body, headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(receiver.secret).verify(body.replace(b"0042", b"0043"), headers)


async def test_a_wrong_secret_is_refused_by_the_receiver(
    receiver: Receiver, sender: WebhookSender
) -> None:
    outcome = await sender.post(receiver.url("/ok"), new_secret(), "msg_0003", invoice_body())

    assert not outcome.delivered
    assert outcome.status == 400
    assert outcome.retryable
    assert "signature rejected" in outcome.detail
    assert receiver.accepted == []
    assert receiver.rejected == ["No matching signature found"]


async def test_the_signed_timestamp_is_the_one_sent(
    receiver: Receiver, sender: WebhookSender
) -> None:
    an_hour_ago = int(time.time()) - 3600

    outcome = await sender.post(
        receiver.url("/ok"), receiver.secret, "msg_0004", invoice_body(), now=an_hour_ago
    )

    assert (outcome.delivered, outcome.status) == (False, 400)
    assert receiver.rejected == ["Message timestamp too old"]


async def test_a_server_error_is_retryable(receiver: Receiver, sender: WebhookSender) -> None:
    outcome = await sender.post(receiver.url("/fail"), receiver.secret, "msg_0005", b"{}")

    assert not outcome.delivered
    assert outcome.status == 500
    assert outcome.retryable
    assert outcome.detail == "HTTP 500: receiver exploded while filing"


async def test_a_long_error_body_is_cut_short(receiver: Receiver, sender: WebhookSender) -> None:
    outcome = await sender.post(receiver.url("/fail-long"), receiver.secret, "msg_0006", b"{}")

    assert (outcome.delivered, outcome.status, outcome.retryable) == (False, 503, True)
    assert outcome.detail.startswith("HTTP 503: xxx")
    assert len(outcome.detail) <= len("HTTP 503: ") + SNIPPET_CHARS


async def test_a_slow_receiver_times_out(receiver: Receiver) -> None:
    async with WebhookSender(timeout_s=0.5) as quick:
        outcome = await quick.post(receiver.url("/slow"), receiver.secret, "msg_0007", b"{}")

    assert not outcome.delivered
    assert outcome.status is None
    assert outcome.retryable
    assert outcome.detail == "timed out after 0.5 s"
    assert 400 <= outcome.duration_ms < 3000
    assert receiver.paths == ["/slow"]


async def test_a_redirect_is_not_followed(receiver: Receiver, sender: WebhookSender) -> None:
    outcome = await sender.post(receiver.url("/redirect"), receiver.secret, "msg_0008", b"{}")

    assert not outcome.delivered
    assert outcome.status == 307
    assert outcome.retryable
    assert outcome.detail == f"HTTP 307: redirect to {receiver.url('/ok')} not followed"
    assert receiver.paths == ["/redirect"]
    assert receiver.accepted == []


async def test_a_closed_port_is_reported(sender: WebhookSender) -> None:
    url = f"http://127.0.0.1:{closed_port()}/hooks"

    outcome = await sender.post(url, new_secret(), "msg_0009", b"{}")

    assert not outcome.delivered
    assert outcome.status is None
    assert outcome.retryable
    assert outcome.detail == "connection refused"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_internal_addresses_are_refused_when_not_allowed(
    receiver: Receiver, host: str
) -> None:
    url = receiver.url("/ok").replace("127.0.0.1", host)
    async with WebhookSender(timeout_s=5.0, allow_internal=False) as strict:
        outcome = await strict.post(url, receiver.secret, "msg_0010", b"{}")

    assert not outcome.delivered
    assert not outcome.retryable
    assert "internal address" in outcome.detail
    assert receiver.paths == []  # nothing left the process


@pytest.mark.parametrize(
    ("address", "internal_expected"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("192.168.0.10", True),
        ("169.254.169.254", True),  # cloud metadata
        ("::1", True),
        ("fd00::1", True),
        ("fe80::1%eth0", True),
        ("224.0.0.1", True),
        ("8.8.8.8", False),
        ("2001:4860:4860::8888", False),
    ],
)
def test_which_addresses_are_internal(address: str, internal_expected: bool) -> None:
    assert internal(address) is internal_expected


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("169.254.169.254", True),  # AWS, GCP, Azure, OpenStack
        ("169.254.0.1", True),
        ("::ffff:169.254.169.254", True),  # IPv4-mapped
        ("64:ff9b::a9fe:a9fe", True),  # NAT64 of 169.254.169.254
        ("2002:a9fe:a9fe::1", True),  # 6to4 of 169.254.169.254
        ("fe80::1%eth0", True),
        ("febf::1", True),
        ("fd00:ec2::254", True),  # AWS over IPv6
        ("100.100.100.200", True),  # Alibaba Cloud
        ("168.63.129.16", True),  # Azure wire server
        ("192.0.0.192", True),  # Oracle Cloud
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("fd00::1", False),
        ("8.8.8.8", False),
    ],
)
def test_which_addresses_are_link_local_or_metadata(address: str, expected: bool) -> None:
    assert metadata(address) is expected


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[fe80::1]:8080/hooks",
        "http://100.100.100.200/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
    ],
)
async def test_metadata_addresses_are_refused_even_where_internal_ones_are_allowed(
    url: str,
) -> None:
    async with WebhookSender(timeout_s=5.0, allow_internal=True) as lenient:
        outcome = await lenient.post(url, new_secret(), "msg_0012", b"{}")

    assert not outcome.delivered
    assert not outcome.retryable
    assert "metadata" in outcome.detail


async def test_a_malformed_secret_is_refused_before_sending(
    receiver: Receiver, sender: WebhookSender
) -> None:
    with pytest.raises(ValueError, match="whsec_"):
        await sender.post(receiver.url("/ok"), "not-a-secret", "msg_0010", b"{}")
    assert receiver.paths == []


def test_sign_matches_the_published_example() -> None:
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


@pytest.mark.parametrize(
    ("secret", "message_id", "timestamp", "body"),
    [
        (SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY),
        (new_secret(), "msg_2", 1_750_000_000, invoice_body()),
        (new_secret(), "evt.with.dots", 0, b""),
    ],
)
def test_sign_matches_the_library(
    secret: str, message_id: str, timestamp: int, body: bytes
) -> None:
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    expected = Webhook(secret).sign(message_id, moment, body.decode())

    assert sign(secret, message_id, timestamp, body) == expected


def test_new_secrets_are_random_and_usable() -> None:
    first, second = new_secret(), new_secret()

    assert first != second
    assert first.startswith("whsec_")
    assert len(base64.b64decode(first.removeprefix("whsec_"), validate=True)) == 32
    signature = sign(first, "msg_1", int(time.time()), b"{}")
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(time.time())),
        "webhook-signature": signature,
    }
    assert Webhook(first).verify(b"{}", headers) == {}


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("", "must start with 'whsec_'"),
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with 'whsec_'"),
        ("whsec_", "must decode to 24-64 bytes, not 0"),
        ("whsec_not base64!", "not valid base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "must decode to 24-64 bytes, not 5"),
    ],
)
def test_sign_refuses_malformed_secrets(secret: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sign(secret, "msg_1", 0, b"{}")


@pytest.mark.parametrize("message_id", ["", "msg 1", "msg\n1", "msg_ü"])
def test_sign_refuses_bad_message_ids(message_id: str) -> None:
    with pytest.raises(ValueError, match="message id"):
        sign(new_secret(), message_id, 0, b"{}")


@pytest.mark.parametrize(
    ("url", "allow_http", "expected"),
    [
        ("https://Hooks.Example.org/in?grant=7", False, "https://hooks.example.org/in?grant=7"),
        ("  https://hooks.example.org:443/in ", False, "https://hooks.example.org/in"),
        ("http://127.0.0.1:8080/ok", True, "http://127.0.0.1:8080/ok"),
        ("https://[::1]:8443/ok", False, "https://[::1]:8443/ok"),
    ],
)
def test_validate_url_accepts_and_normalises(url: str, allow_http: bool, expected: str) -> None:
    assert validate_url(url, allow_http=allow_http) == expected


@pytest.mark.parametrize(
    ("url", "allow_http", "message"),
    [
        ("ftp://hooks.example.org/in", True, "must use https or http, not 'ftp'"),
        ("/hooks/in", True, "must be absolute"),
        ("hooks.example.org/in", True, "must be absolute"),
        ("https://user:pass@hooks.example.org/in", False, "user name or password"),
        ("https://@hooks.example.org/in", False, "user name or password"),
        ("http://hooks.example.org/in", False, "must use https, not 'http'"),
        ("https:///in", False, "must be absolute|no host"),
        ("https://hooks.example.org/in#part", False, "fragment"),
        ("https://hooks.example.org:99999/in", False, "port"),
        ("https://hooks.example.org/" + "a" * 2000, False, "longer than 2000"),
        ("", False, "empty"),
    ],
)
def test_validate_url_refuses(url: str, allow_http: bool, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_url(url, allow_http=allow_http)
