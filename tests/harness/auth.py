"""The auth service running in-process against real Postgres, NATS, Redis and SMTP.

Its fixtures (``smtp``, ``auth``, ``db``) are registered for every test by ``tests/conftest.py``:
the inventory and later services need real tokens and identity events from a real auth.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

import asyncpg
import nats
import pytest
from aiosmtpd.controller import Controller
from nats.aio.client import Client as NatsClient

from compgrid_auth.bootstrap import build
from compgrid_auth.config import Settings
from compgrid_auth.use_cases.deps import Deps
from compgrid_runtime.app import ServiceApp
from compgrid_runtime.embedded import free_port
from compgrid_runtime.errors import DomainError
from compgrid_runtime.mail import SmtpMailer, SmtpSettings
from compgrid_runtime.migrations import upgrade
from compgrid_runtime.rpc import call
from compgrid_runtime.tokens import JWKS_KEY, KEYS_BUCKET
from tests.harness.servers import Servers

ADMIN_EMAIL = "root-admin@example.org"
ADMIN_PASSWORD = "correct horse battery staple"
PASSWORD = "a perfectly fine passphrase"


class Inbox:
    """An aiosmtpd handler that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.refuse = False

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refuse:
            return "554 Transaction failed"
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"

    def to(self, address: str) -> list[Message]:
        """Return the messages sent to one address."""
        return [m for m in self.messages if address in m["To"]]


@pytest.fixture(scope="session")
def smtp() -> Iterator[tuple[Inbox, int]]:
    """A real SMTP server on a free port."""
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


@dataclass
class AuthHarness:
    """The running service, its ports, and a NATS client to call it as the gateway would."""

    app: ServiceApp
    deps: Deps
    nc: NatsClient
    inbox: Inbox
    tokens: dict[str, str] = field(default_factory=dict)

    async def call(
        self,
        operation: str,
        body: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        address: str | None = "198.51.100.7",
    ) -> Any:
        """Call ``rpc.auth.<operation>`` and return its data (raises the remote error)."""
        return await call(
            self.nc,
            "auth",
            operation,
            body or {},
            token=token,
            client_address=address,
            request_id=uuid.uuid4().hex,
        )

    async def refused(self, operation: str, body: dict[str, Any], **kw: Any) -> DomainError:
        """Call an operation that must fail; return the error it raised."""
        with pytest.raises(DomainError) as caught:
            await self.call(operation, body, **kw)
        return caught.value

    async def published_jwks(self) -> dict[str, Any]:
        """Return the JWKS as the key bucket holds it now."""
        kv = await self.nc.jetstream().key_value(KEYS_BUCKET)
        entry = await kv.get(JWKS_KEY)
        assert entry.value is not None
        jwks: dict[str, Any] = json.loads(entry.value)
        return jwks

    async def login(self, email: str, password: str = PASSWORD, address: str | None = None) -> str:
        """Log in and return the access token."""
        pair = await self.call(
            "login",
            {"email": email, "password": password},
            address=address or f"203.0.113.{uuid.uuid4().int % 250}",
        )
        return str(pair["access_token"])

    async def user(self, role: str = "member", admin_token: str | None = None) -> tuple[str, str]:
        """Create an account with one platform role; return (user id, email)."""
        email = f"{role}-{uuid.uuid4().hex[:10]}@example.org"
        created = await self.call(
            "users.create",
            {
                "email": email,
                "display_name": f"{role} person",
                "password": PASSWORD,
                "roles": [role],
            },
            token=admin_token or self.tokens["admin"],
        )
        return str(created["id"]), email


@pytest.fixture
async def db(real: Servers) -> AsyncIterator[asyncpg.Connection]:
    """A raw connection to the run's database, to look behind the service."""
    conn = await asyncpg.connect(
        real.database_url.replace("postgresql+asyncpg://", "postgresql://")
    )
    yield conn
    await conn.close()


@pytest.fixture(scope="session")
async def auth(real: Servers, smtp: tuple[Inbox, int]) -> AsyncIterator[AuthHarness]:
    """The auth service with its schema migrated and the first admin bootstrapped."""
    await asyncio.to_thread(upgrade, "compgrid_auth", real.database_url)
    inbox, port = smtp
    settings = Settings(
        database_url=real.database_url,
        nats_url=real.nats_url,
        redis_url=real.redis_url,
        redis_prefix=real.redis_prefix,
        admin_email=ADMIN_EMAIL,
        admin_password=ADMIN_PASSWORD,
        # The run's tokens (the admin's above all) are minted once and used by every later
        # test: they must outlive a whole run on a slow machine, not the 15 minutes of default.
        access_ttl_s=4 * 3600,
        log_level="WARNING",
    )
    app, deps = build(settings, mailer=SmtpMailer(SmtpSettings(host="127.0.0.1", port=port)))
    await app.start()
    await asyncio.wait_for(app.keys.ready.wait(), 10)
    client = await nats.connect(real.nats_url)
    harness = AuthHarness(app, deps, client, inbox)
    harness.tokens["admin"] = await harness.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    yield harness
    await client.close()
    await app.stop()
