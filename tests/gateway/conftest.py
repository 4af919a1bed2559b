"""The whole platform for HTTP tests: ``scripts/devstack.py`` (what ``just dev`` runs) started
once per test run on the run's Postgres and Redis, with NATS JetStream from the wheel under
per-service users, every service as its own process and the demo-dc provisioner driving
simulated libvirt hosts. Tests talk to it only through the gateway, like people and scripts do.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from compgrid_runtime.embedded import free_port
from tests.harness.platform import start_platform, stop_platform
from tests.harness.servers import Servers, drop_database

PASSWORDS = {
    "admin": ("admin@compgrid.example", "demo-admin-password"),
    "pi": ("pi@compgrid.example", "demo-pi-password"),
    "researcher": ("researcher@compgrid.example", "demo-researcher-password"),
    "finance": ("finance@compgrid.example", "demo-finance-password"),
}


@dataclass
class Stack:
    """The running platform: where the API is and how each demo person signs in."""

    base_url: str
    state_dir: Path
    database_url: str
    log: Path
    tokens: dict[str, str] = field(default_factory=dict)
    signed_at: dict[str, float] = field(default_factory=dict)

    @property
    def api(self) -> str:
        """The API root."""
        return f"{self.base_url}/api/v1"

    def login(self, who: str) -> str:
        """A fresh access token of one demo person (``admin``, ``pi``, ``researcher``,
        ``finance``)."""
        email, password = PASSWORDS[who]
        reply = httpx.post(
            f"{self.api}/auth/login", json={"email": email, "password": password}, timeout=30
        )
        assert reply.status_code == 200, reply.text
        token: str = reply.json()["access_token"]
        return token

    def token(self, who: str) -> str:
        """An access token of one demo person, signed in again once it is 10 minutes old (the
        platform's tokens last 15, and the gateway tests take longer than that)."""
        signed_at = self.signed_at.get(who, 0.0)
        if who not in self.tokens or time.monotonic() - signed_at > 600:
            self.tokens[who] = self.login(who)
            self.signed_at[who] = time.monotonic()
        return self.tokens[who]

    def headers(self, who: str | None) -> dict[str, str]:
        """Authorization headers of one demo person (none for ``None``)."""
        return {} if who is None else {"Authorization": f"Bearer {self.token(who)}"}


@pytest.fixture(scope="session")
async def stack(
    real: Servers,
    _servers: tuple[Servers, str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    """Every service running against the run's servers (a database of its own)."""
    state = Path(tmp_path_factory.mktemp("platform"))
    server, _, name = real.database_url.rpartition("/")
    database_url = f"{server}/{name}_gw"
    env = {
        **os.environ,
        "COMPGRID_DATABASE_URL": database_url,
        "COMPGRID_REDIS_URL": real.redis_url,
        "COMPGRID_GATEWAY_API_PORT": str(free_port()),
        "COMPGRID_PROVISIONER_TICK_INTERVAL_S": "2",  # usage shows up within seconds
        "COMPGRID_PROVISIONER_HEARTBEAT_INTERVAL_S": "1",  # workers seen within a second
        # Redis keys of this platform only (login throttling, idempotency records)
        "COMPGRID_AUTH_REDIS_PREFIX": f"{real.redis_prefix}gw:auth:",
        "COMPGRID_METERING_REDIS_PREFIX": f"{real.redis_prefix}gw:metering:",
        "COMPGRID_GATEWAY_IDEMPOTENCY_PREFIX": f"{real.redis_prefix}gw:idem:",
        "COMPGRID_GATEWAY_RATE_LIMIT_PREFIX": f"{real.redis_prefix}gw:rate",
        # the tests stand in for a reverse proxy: X-Forwarded-For names the client
        "COMPGRID_GATEWAY_TRUSTED_PROXIES": '["127.0.0.1"]',
    }
    env.pop("COMPGRID_NATS_URL", None)  # NATS from the wheel, one user per service
    launcher, base_url = start_platform(state, env)
    try:
        stack = Stack(base_url, state, database_url, state / "platform.log")
        wait_for(lambda: live_workers(stack, "demo-dc"), 120)  # placement needs one
        yield stack
    finally:
        stop_platform(launcher)
        await drop_database(_servers[1], f"{name}_gw")


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the API root."""
    async with httpx.AsyncClient(base_url=stack.api, timeout=30) as http:
        yield http


def live_workers(stack: Stack, datacenter: str) -> list[dict[str, Any]]:
    """The live provisioner workers ``GET /datacenters`` shows for one datacenter."""
    reply = httpx.get(f"{stack.api}/datacenters", headers=stack.headers("admin"), timeout=30)
    assert reply.status_code == 200, reply.text
    found = [dc for dc in reply.json() if dc["name"] == datacenter]
    return [w for dc in found for w in dc["workers"] if w["live"]]


def wait_for(predicate: Any, timeout_s: float = 60.0, interval_s: float = 0.25) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout_s:.0f} s")
        time.sleep(interval_s)
