"""The inventory service in-process beside a real auth service, on real Postgres and NATS.

Tokens come from the auth service and projects and budget codes reach the inventory as auth's
events. Tests play the provisioner and billing by publishing their events to JetStream, and
read the inventory's commands from the PROVISION stream, as those services will.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import asyncpg
import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import ConsumerConfig, DeliverPolicy

from compgrid_events import Event, registry
from compgrid_events.streams import ALL_STREAMS
from compgrid_inventory.bootstrap import build
from compgrid_inventory.config import Settings
from compgrid_inventory.use_cases.deps import Deps
from compgrid_runtime.app import ServiceApp
from compgrid_runtime.errors import DomainError
from compgrid_runtime.migrations import upgrade
from compgrid_runtime.rpc import call
from compgrid_runtime.streams import ensure_streams
from tests.harness.auth import AuthHarness
from tests.harness.servers import Servers
from tests.runtime.integration.waiting import wait_until

LEASE_WARN_S = 3.0
LEASE_GRACE_S = 1.5


@dataclass
class InventoryHarness:
    """The running inventory and a NATS client to call it as the gateway would."""

    app: ServiceApp
    deps: Deps
    nc: NatsClient
    auth: AuthHarness

    async def call(self, operation: str, body: dict[str, Any] | None = None, *, token: str) -> Any:
        """Call ``rpc.inventory.<operation>``; return its data (raises the remote error)."""
        return await call(self.nc, "inventory", operation, body or {}, token=token, timeout_s=15)

    async def refused(self, operation: str, body: dict[str, Any], *, token: str) -> DomainError:
        """Call an operation that must fail; return the error."""
        with pytest.raises(DomainError) as caught:
            await self.call(operation, body, token=token)
        return caught.value

    async def publish(self, event: Event) -> None:
        """Publish an event as its owning service would."""
        await self.nc.jetstream().publish(
            event.subject, event.to_json(), headers={"Nats-Msg-Id": str(event.event_id)}
        )


@pytest.fixture(scope="session")
async def inventory(real: Servers, auth: AuthHarness) -> AsyncIterator[InventoryHarness]:
    """The inventory service with its schema migrated and every stream in place."""
    await asyncio.to_thread(upgrade, "compgrid_inventory", real.database_url)
    client = await nats.connect(real.nats_url)
    await ensure_streams(client.jetstream(), ALL_STREAMS)
    settings = Settings(
        database_url=real.database_url,
        nats_url=real.nats_url,
        redis_url=real.redis_url,
        log_level="WARNING",
        lease_check_interval_s=0.25,
        lease_warn_before_s=LEASE_WARN_S,
        lease_grace_s=LEASE_GRACE_S,
        repair_interval_s=3600,
        outbox_poll_interval_s=0.05,
    )
    app, deps = build(settings)
    await app.start()
    await asyncio.wait_for(app.keys.ready.wait(), 10)
    yield InventoryHarness(app, deps, client, auth)
    await client.close()
    await app.stop()


@dataclass
class Lab:
    """One project with its people, a grant and a small datacenter of its own."""

    project_id: str
    budget_code_id: str
    pi: str
    member: str
    outsider: str
    admin: str
    finance: str
    datacenter: str
    image: str
    small: str
    big: str
    gpu: str
    tier_id: str
    member_id: str = ""
    hosts: dict[str, str] = field(default_factory=dict)

    def request(self, name: str | None = None, **overrides: Any) -> dict[str, Any]:
        """A request body for a small instance in this lab's datacenter."""
        return {
            "name": name or f"vm-{uuid.uuid4().hex[:6]}",
            "project_id": self.project_id,
            "budget_code_id": self.budget_code_id,
            "instance_type": self.small,
            "image": self.image,
            "datacenter": self.datacenter,
            **overrides,
        }


async def make_lab(
    inventory: InventoryHarness,
    db: asyncpg.Connection,
    *,
    hosts: int = 2,
    host_vcpus: int = 8,
    funding: str = "10000",
    valid_to: date | None = None,
) -> Lab:
    """Create people, project, grant (through auth) and a catalogue (through inventory)."""
    auth = inventory.auth
    admin = auth.tokens["admin"]
    tag = uuid.uuid4().hex[:8]
    pi_id, pi_email = await auth.user("pi")
    member_id, member_email = await auth.user("member")
    _, outsider_email = await auth.user("member")
    _, finance_email = await auth.user("finance")
    project = await auth.call(
        "projects.create", {"name": f"lab-{tag}", "pi_user_id": pi_id}, token=admin
    )
    await auth.call(
        "projects.add_member",
        {"project_id": project["id"], "user_id": member_id, "role": "member"},
        token=admin,
    )
    today = date.today()
    code = await auth.call(
        "budget_codes.create",
        {
            "project_id": project["id"],
            "code": f"G-{tag}",
            "name": "grant",
            "funding_amount": funding,
            "currency": "EUR",
            "valid_from": str(today - timedelta(days=30)),
            "valid_to": str(valid_to or today + timedelta(days=365)),
        },
        token=admin,
    )

    async def projected() -> bool:
        found = await db.fetchval(
            "SELECT count(*) FROM inventory.budget WHERE id = $1", uuid.UUID(code["id"])
        )
        return bool(found)

    await wait_until(projected, 20, "project and budget code reach the inventory")
    dc = f"dc-{tag}"
    call = inventory.call
    await call("datacenters.create", {"name": dc}, token=admin)
    host_ids = {}
    for index in range(hosts):
        name = f"h{index}"
        created = await call(
            "hosts.register",
            {
                "datacenter": dc,
                "name": name,
                "libvirt_uri": "test:///default",
                "vcpus": host_vcpus,
                "memory_mib": 32768,
                "disk_gib": 500,
                "cpu_overcommit": "1.0",
            },
            token=admin,
        )
        host_ids[name] = created["id"]
    gpu_host = await call(
        "hosts.register",
        {
            "datacenter": dc,
            "name": "gpu0",
            "libvirt_uri": "test:///default",
            "vcpus": 16,
            "memory_mib": 65536,
            "disk_gib": 1000,
            "cpu_overcommit": "1.0",
            "gpus": {"a100": 2},
            "labels": {"gpu": "a100"},
        },
        token=admin,
    )
    host_ids["gpu0"] = gpu_host["id"]
    image = await call(
        "images.create",
        {"name": f"img-{tag}", "system_type": "linux", "source": "/images/linux.qcow2"},
        token=admin,
    )
    tier = await call(
        "price_tiers.create",
        {
            "name": f"tier-{tag}",
            "currency": "EUR",
            "effective_from": "2026-01-01T00:00:00Z",
            "rates": {
                "vcpu_hour": "0.10",
                "memory_gib_hour": "0.01",
                "storage_gib_month": "0.073",
                "gpu_hour": {"a100": "2.00"},
            },
        },
        token=admin,
    )
    types = {}
    for kind, vcpus, memory, gpus in (
        ("small", 2, 2048, {}),
        ("big", 8, 8192, {}),
        ("gpu", 4, 8192, {"a100": 1}),
    ):
        created = await call(
            "types.create",
            {
                "name": f"{kind}-{tag}",
                "vcpus": vcpus,
                "memory_mib": memory,
                "disk_gib": 10,
                "gpus": gpus,
                "system_types": ["linux"],
                "price_tier_id": tier["id"],
            },
            token=admin,
        )
        types[kind] = created["name"]
    return Lab(
        project_id=project["id"],
        budget_code_id=code["id"],
        pi=await auth.login(pi_email),
        member=await auth.login(member_email),
        outsider=await auth.login(outsider_email),
        admin=admin,
        finance=await auth.login(finance_email),
        datacenter=dc,
        image=image["name"],
        small=types["small"],
        big=types["big"],
        gpu=types["gpu"],
        tier_id=tier["id"],
        member_id=member_id,
        hosts=host_ids,
    )


@pytest.fixture
async def lab(inventory: InventoryHarness, db: asyncpg.Connection) -> Lab:
    """A fresh lab for one test."""
    return await make_lab(inventory, db)


class Commands:
    """The provisioning commands the inventory published for one datacenter, in order."""

    def __init__(self, nc: NatsClient, datacenter: str) -> None:
        self._nc = nc
        self._subject = f"provision.{datacenter}.>"
        self._sub: Any = None
        self.seen: list[Event] = []

    async def start(self) -> Commands:
        js = self._nc.jetstream()
        self._sub = await js.pull_subscribe(
            self._subject,
            stream="PROVISION",
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        return self

    async def collect(self) -> list[Event]:
        """Fetch what arrived since the last call."""
        try:
            messages = await self._sub.fetch(100, timeout=0.3)
        except (TimeoutError, nats.errors.TimeoutError):
            return self.seen
        for msg in messages:
            await msg.ack()
            self.seen.append(registry.decode(msg.subject, msg.data))
        return self.seen

    async def wait_for(self, kind: type[Event], instance_id: str, timeout_s: float = 15) -> Any:
        """Wait for a command of this kind for this instance; return it."""
        found: list[Event] = []

        async def arrived() -> bool:
            await self.collect()
            found[:] = [
                e
                for e in self.seen
                if isinstance(e, kind) and str(getattr(e, "instance_id", "")) == instance_id
            ]
            return bool(found)

        await wait_until(arrived, timeout_s, f"{kind.__name__} for {instance_id}")
        return found[-1]


@pytest.fixture
async def commands(inventory: InventoryHarness, lab: Lab) -> AsyncIterator[Commands]:
    """The lab datacenter's provisioning commands."""
    watcher = await Commands(inventory.nc, lab.datacenter).start()
    yield watcher
    await watcher._sub.unsubscribe()


async def state_of(inventory: InventoryHarness, lab: Lab, instance_id: str) -> dict[str, Any]:
    """The instance as its project's member sees it."""
    result: dict[str, Any] = await inventory.call(
        "instances.get", {"instance_id": instance_id}, token=lab.member
    )
    return result


async def wait_state(
    inventory: InventoryHarness, lab: Lab, instance_id: str, state: str, timeout_s: float = 15
) -> dict[str, Any]:
    """Wait until the instance reaches a state; return it."""
    seen: dict[str, Any] = {}

    async def reached() -> bool:
        seen.update(await state_of(inventory, lab, instance_id))
        return seen["state"] == state

    await wait_until(reached, timeout_s, f"instance {instance_id} {state}")
    return seen
