"""The services run under the per-service NATS users of deploy/nats/nats-server.conf: everything
they need works, and a service cannot publish, serve or manage what belongs to another."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from pydantic import SecretStr

from compgrid_auth.adapters.published import publish_revoked, sweep_revoked
from compgrid_auth.bootstrap import build as build_auth
from compgrid_auth.config import Settings as AuthSettings
from compgrid_events.streams import ALL_STREAMS
from compgrid_inventory.bootstrap import bootstrap as build_inventory
from compgrid_inventory.config import Settings as InventorySettings
from compgrid_runtime.embedded import EmbeddedNats
from compgrid_runtime.errors import Unauthorized
from compgrid_runtime.migrations import upgrade
from compgrid_runtime.natsconf import SERVICES, SETUP_USER, password_variable, render
from compgrid_runtime.rpc import call
from compgrid_runtime.streams import _ensure_all
from tests.auth.integration.conftest import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.harness.servers import Servers
from tests.runtime.integration.waiting import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis]

CONFIG = Path(__file__).resolve().parents[3] / "deploy" / "nats" / "nats-server.conf"
PASSWORDS = {user: f"test-password-{user}" for user in [*SERVICES, SETUP_USER]}


def test_committed_config_is_what_the_contracts_give() -> None:
    assert CONFIG.read_text() == render(), "run: uv run compgrid-nats-config " + str(CONFIG)


@pytest.fixture(scope="module")
async def secured(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedNats]:
    env = {password_variable(user): password for user, password in PASSWORDS.items()}
    server = EmbeddedNats(tmp_path_factory.mktemp("secured"), config=CONFIG, env=env).start()
    await _ensure_all(server.url, 1, SETUP_USER, PASSWORDS[SETUP_USER])
    yield server
    server.stop()


async def connect(server: EmbeddedNats, user: str, errors: list[str]) -> NatsClient:
    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    return await nats.connect(
        server.url, user=user, password=PASSWORDS[user], error_cb=on_error, name=f"test-{user}"
    )


async def said(errors: list[str], subject: str) -> bool:
    return any(subject.lower() in error.lower() for error in errors)  # nats-py lowercases


async def stream_messages(client: NatsClient, stream: str) -> int:
    return int((await client.jetstream().stream_info(stream)).state.messages)


async def test_services_work_under_their_own_users(secured: EmbeddedNats, real: Servers) -> None:
    await asyncio.to_thread(upgrade, "compgrid_auth", real.database_url)
    common: dict[str, Any] = {
        "database_url": real.database_url,
        "nats_url": secured.url,
        "redis_url": real.redis_url,
        "log_level": "WARNING",
    }
    auth, _ = build_auth(
        AuthSettings(
            **common,
            redis_prefix=real.redis_prefix,
            nats_user="auth",
            nats_password=SecretStr(PASSWORDS["auth"]),
            admin_email=ADMIN_EMAIL,
            admin_password=ADMIN_PASSWORD,
        )
    )
    inventory = build_inventory(
        InventorySettings(
            **common, nats_user="inventory", nats_password=SecretStr(PASSWORDS["inventory"])
        )
    )
    errors: list[str] = []
    gateway = await connect(secured, "gateway", errors)
    await auth.start()
    await inventory.start()
    try:
        await asyncio.wait_for(auth.keys.ready.wait(), 10)
        await asyncio.wait_for(inventory.keys.ready.wait(), 10)  # reads the auth key bucket
        pair = await call(
            gateway, "auth", "login", {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
        )
        principal = inventory.verifier.verify(pair["access_token"])
        assert "admin" in principal.roles
        before = await stream_messages(gateway, "AUTH")
        await call(
            gateway,
            "auth",
            "users.create",
            {
                "email": "permitted@example.org",
                "display_name": "Permitted",
                "password": "a perfectly fine passphrase",
                "roles": ["member"],
            },
            token=pair["access_token"],
        )

        async def published() -> bool:
            return await stream_messages(gateway, "AUTH") > before

        await wait_until(published, timeout_s=10)  # the outbox relay may publish auth.>

        # auth writes ended sessions to its bucket and sweeps them; inventory reads them
        await call(gateway, "auth", "logout", {"refresh_token": pair["refresh_token"]})

        async def logged_out() -> bool:
            try:
                inventory.verifier.verify(pair["access_token"])
            except Unauthorized:
                return True
            return False

        await wait_until(logged_out, timeout_s=5)
        await publish_revoked(auth.js, uuid.uuid4(), time.time() - 1)
        assert await sweep_revoked(auth.js, time.time()) >= 1
    finally:
        await inventory.stop()
        await auth.stop()
        await gateway.close()
    assert errors == []


async def test_a_service_cannot_publish_another_services_events(secured: EmbeddedNats) -> None:
    errors: list[str] = []
    inventory = await connect(secured, "inventory", errors)
    try:
        before = await stream_messages(inventory, "AUTH")
        with pytest.raises((TimeoutError, nats.errors.Error)):
            await inventory.jetstream().publish("auth.user.registered", b"{}", timeout=1)
        await wait_until(lambda: said(errors, "auth.user.registered"), 5)
        assert await stream_messages(inventory, "AUTH") == before
    finally:
        await inventory.close()


async def test_a_service_cannot_answer_for_another_service(secured: EmbeddedNats) -> None:
    errors: list[str] = []
    inventory = await connect(secured, "inventory", errors)
    try:
        await inventory.subscribe("rpc.auth.login", queue="auth")
        await inventory.flush()
        await wait_until(lambda: said(errors, "rpc.auth.login"), 5)
        assert any("permissions violation for subscription" in e for e in errors)
    finally:
        await inventory.close()


async def test_a_service_cannot_change_or_delete_streams_it_does_not_own(
    secured: EmbeddedNats,
) -> None:
    errors: list[str] = []
    gateway = await connect(secured, "gateway", errors)
    try:
        js = gateway.jetstream()
        for attempt in (js.delete_stream("AUTH"), js.purge_stream("BILLING")):
            with pytest.raises((TimeoutError, nats.errors.Error)):
                await asyncio.wait_for(attempt, 3)
        await wait_until(lambda: said(errors, "$JS.API.STREAM.DELETE.AUTH"), 5)
        await wait_until(lambda: said(errors, "$JS.API.STREAM.PURGE.BILLING"), 5)
        names = {info.config.name for info in await js.streams_info()}
        assert {spec.name for spec in ALL_STREAMS} <= names
    finally:
        await gateway.close()


async def test_a_wrong_password_is_refused(secured: EmbeddedNats) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(
            secured.url, user="auth", password="wrong", allow_reconnect=False, connect_timeout=2
        )
