"""A running ``just dev`` for the end-to-end tests: its API as the demo people use it, what the
launcher says, and the processes it supervises."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from compgrid_runtime.embedded import free_port
from tests.harness.platform import launcher_lines, start_platform, stop_platform, wait_for_line
from tests.harness.servers import Servers, drop_database

PASSWORDS = {
    "admin": ("admin@compgrid.example", "demo-admin-password"),
    "pi": ("pi@compgrid.example", "demo-pi-password"),
    "researcher": ("researcher@compgrid.example", "demo-researcher-password"),
}
PROCESSES = ("auth", "inventory", "provisioner@demo-dc", "metering", "billing", "gateway")
"""The processes ``just dev`` starts: every service, with the demo datacenter's worker."""
T = TypeVar("T")


@dataclass
class Dev:
    """The running launcher: where its API is, its state directory and its log."""

    launcher: Any
    base_url: str
    state: Path
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def log(self) -> Path:
        """Everything the launcher and its services printed."""
        return self.state / "platform.log"

    def http(self) -> httpx.AsyncClient:
        """A client on the API root."""
        return httpx.AsyncClient(base_url=f"{self.base_url}/api/v1", timeout=30)

    async def headers(self, who: str) -> dict[str, str]:
        """Authorization headers of one demo person, signed in once."""
        if who not in self.tokens:
            email, password = PASSWORDS[who]
            async with self.http() as http:
                reply = await http.post("/auth/login", json={"email": email, "password": password})
            assert reply.status_code == 200, reply.text
            self.tokens[who] = reply.json()["access_token"]
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def said(self) -> list[str]:
        """The launcher's own lines so far."""
        return launcher_lines(self.log)

    async def says(self, pattern: str, *, after: int = 0, timeout_s: float = 120) -> str:
        """Wait for a line of the launcher's own matching ``pattern``, past line ``after``."""
        return await wait_for_line(self.log, pattern, after=after, timeout_s=timeout_s)

    def pid(self, process: str) -> int:
        """The pid the launcher last started ``process`` with."""
        started = re.compile(rf"^{re.escape(process)} (?:re)?started \(pid (\d+)")
        pids = [int(m.group(1)) for line in self.said() if (m := started.match(line))]
        assert pids, f"the launcher never started {process}"
        return pids[-1]

    def health_port(self, process: str) -> int:
        """The port ``process`` answers ``/readyz`` on."""
        started = re.compile(rf"^{re.escape(process)} started \(pid \d+, health on port (\d+)")
        return next(int(m.group(1)) for line in self.said() if (m := started.match(line)))


async def answer(
    http: httpx.AsyncClient, method: str, url: str, *, timeout_s: float = 180, **kw: Any
) -> httpx.Response:
    """Send a request again until it is answered below 500 (a service may be restarting)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        with contextlib.suppress(httpx.HTTPError):
            reply = await http.request(method, url, **kw)
            if reply.status_code < 500:
                return reply
        assert loop.time() < deadline, f"{method} {url} not answered within {timeout_s:.0f}s"
        await asyncio.sleep(0.5)


async def eventually(check: Callable[[], Awaitable[T | None]], what: str, timeout_s: float) -> T:
    """Ask ``check`` again until it returns something (not None); fail after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (found := await check()) is None:
        assert loop.time() < deadline, f"{what}: not within {timeout_s:.0f}s"
        await asyncio.sleep(0.2)
    return found


async def ready(port: int, *, timeout_s: float = 120) -> None:
    """Wait until the process behind ``port`` answers ``/readyz`` with 200."""

    async def answers() -> bool | None:
        with contextlib.suppress(httpx.HTTPError):
            async with httpx.AsyncClient(timeout=2) as http:
                if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return True
        return None

    await eventually(answers, f"ready on port {port}", timeout_s)


async def demo_grant(dev: Dev, who: str = "researcher") -> dict[str, Any]:
    """The demo project's budget code as ``who`` sees it."""
    async with dev.http() as http:
        reply = await answer(http, "GET", "/budget-codes", headers=await dev.headers(who))
    assert reply.status_code == 200, reply.text
    codes: list[dict[str, Any]] = reply.json()
    return next(c for c in codes if c["code"] == "DEMO-GRANT-1")


def request_body(grant: dict[str, Any]) -> dict[str, Any]:
    """A request for a small demo instance charged to ``grant``."""
    return {
        "name": f"vm-{uuid.uuid4().hex[:8]}",
        "project_id": grant["project_id"],
        "budget_code_id": grant["id"],
        "instance_type": "small",
        "image": "ubuntu-24.04",
    }


@contextlib.asynccontextmanager
async def running_dev(
    real: Servers, admin_url: str, state: Path, suffix: str, *extra: str
) -> AsyncIterator[Dev]:
    """``just dev`` on the run's Postgres (a database of its own, named with ``suffix``) and
    Redis, with NATS from the wheel and its own mail server; stopped and dropped afterwards."""
    server, _, name = real.database_url.rpartition("/")
    env = {
        **os.environ,
        "COMPGRID_DATABASE_URL": f"{server}/{name}_{suffix}",
        "COMPGRID_REDIS_URL": real.redis_url,
        "COMPGRID_GATEWAY_API_PORT": str(free_port()),
        "COMPGRID_PROVISIONER_TICK_INTERVAL_S": "2",
        "COMPGRID_AUTH_ACCESS_TTL_S": "3600",  # one sign-in lasts through the module's tests
        # a command a killed worker held goes to the restarted one after this (not 5 minutes)
        "COMPGRID_PROVISIONER_COMMAND_ACK_WAIT_S": "15",
        "COMPGRID_PROVISIONER_ORPHAN_GRACE_S": "60",
        "COMPGRID_AUTH_REDIS_PREFIX": f"{real.redis_prefix}{suffix}:auth:",
        "COMPGRID_METERING_REDIS_PREFIX": f"{real.redis_prefix}{suffix}:metering:",
        "COMPGRID_GATEWAY_IDEMPOTENCY_PREFIX": f"{real.redis_prefix}{suffix}:idem:",
    }
    for own in ("COMPGRID_NATS_URL", "COMPGRID_SMTP_HOST", "COMPGRID_SMTP_PORT"):
        env.pop(own, None)  # the launcher's own NATS and mail server
    launcher, base_url = start_platform(state, env, *extra)
    try:
        yield Dev(launcher, base_url, state)
    finally:
        stop_platform(launcher)
        await drop_database(admin_url, f"{name}_{suffix}")
