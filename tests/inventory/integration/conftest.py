"""The inventory service in-process beside a real auth service, on real Postgres and NATS.

Tokens come from the auth service and projects and budget codes reach the inventory as auth's
events. Tests play the provisioner and billing by publishing their events to JetStream (a
worker's heartbeat too), and read the inventory's commands from the PROVISION stream, as those
services will.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Protocol, TypeVar
from uuid import UUID

import asyncpg
import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import DeliverPolicy

from compgrid_events import Event
from compgrid_events.base import utc_now
from compgrid_events.inventory import InstanceScheduled
from compgrid_events.provisioner import InstanceStarted, InstanceStopped, WorkerHeartbeat
from compgrid_events.streams import ALL_STREAMS
from compgrid_inventory.adapters.tables import metadata
from compgrid_inventory.adapters.workers import has_live_worker
from compgrid_inventory.bootstrap import build
from compgrid_inventory.config import Settings
from compgrid_inventory.entrypoints.rpc import register_routes
from compgrid_inventory.use_cases.deps import Deps
from compgrid_runtime.app import ServiceApp
from compgrid_runtime.errors import DomainError
from compgrid_runtime.migrations import upgrade
from compgrid_runtime.rpc import call
from compgrid_runtime.streams import ensure_streams
from tests.harness.auth import AuthHarness
from tests.harness.servers import Servers
from tests.harness.streams import StreamWatch
from tests.runtime.integration.waiting import wait_until

LAB_GPU_LABELS = {"gpu.pci.a100": "0000:81:00.0,0000:82:00.0"}
"""The PCI devices of the lab GPU host's two A100s."""
LEASE_WARN_S = 3.0
LEASE_GRACE_S = 1.5
DEFAULT_URI = "test:///default"
COMMAND_TIMEOUT_S = 2.0
"""How long a command may wait for a worker when none is live."""

E = TypeVar("E", bound=Event)


def tag() -> str:
    """A short random suffix for names that must be unique in the run."""
    return uuid.uuid4().hex[:8]


@dataclass
class InventoryHarness:
    """The running inventory and a NATS client to call it as the gateway would."""

    app: ServiceApp
    deps: Deps
    nc: NatsClient
    auth: AuthHarness

    async def call(self, operation: str, body: dict[str, Any] | None = None, *, token: str) -> Any:
        """Call ``rpc.inventory.<operation>``; return its data (raises the remote error).

        A datacenter created here gets a provisioner worker at once (tests play it, see
        :meth:`serve`), so placement uses it as it uses a deployed datacenter's.
        """
        data = await call(self.nc, "inventory", operation, body or {}, token=token, timeout_s=15)
        if operation == "datacenters.create":
            await self.serve(data["name"])
        return data

    async def serve(self, datacenter: str, interval_s: float = 3600.0) -> None:
        """Announce the datacenter's worker (live for three ``interval_s``); wait until known."""
        await self.publish(self._heartbeat(datacenter, interval_s))
        await self._wait_served(datacenter, True)

    async def unserve(self, datacenter: str) -> None:
        """The datacenter's worker stops (its last heartbeat says so); wait until known."""
        await self.publish(self._heartbeat(datacenter, 1.0, stopping=True))
        await self._wait_served(datacenter, False)

    @staticmethod
    def _heartbeat(datacenter: str, interval_s: float, stopping: bool = False) -> WorkerHeartbeat:
        return WorkerHeartbeat(
            datacenter=datacenter,
            worker_id=f"played-{datacenter}",
            hostname="test",
            pid=0,
            started_at=utc_now(),
            interval_s=interval_s,
            stopping=stopping,
        )

    async def _wait_served(self, datacenter: str, served: bool) -> None:
        async def reached() -> bool:
            async with self.deps.uow() as uow:
                return await has_live_worker(uow.session, datacenter) is served

        await wait_until(reached, 15, f"{datacenter} served: {served}")

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
        command_timeout_s=COMMAND_TIMEOUT_S,
        command_check_interval_s=0.25,
        outbox_poll_interval_s=0.05,
    )
    app, deps = build(settings)
    await app.start()
    await asyncio.wait_for(app.keys.ready.wait(), 10)
    yield InventoryHarness(app, deps, client, auth)
    await client.close()
    await app.stop()


@contextlib.asynccontextmanager
async def extra_processes(
    inventory: InventoryHarness, count: int
) -> AsyncIterator[list[ServiceApp]]:
    """``count`` more inventory processes answering requests beside the harness's, as a
    scaled-out deployment runs them (RPC only: no consumers, no background jobs)."""
    apps: list[ServiceApp] = []
    try:
        for _ in range(count):
            settings = inventory.deps.settings
            app = ServiceApp(settings, metadata)
            register_routes(app.rpc, Deps(uow=app.unit_of_work, settings=settings))
            await app.start()
            apps.append(app)
            await asyncio.wait_for(app.keys.ready.wait(), 10)
        yield apps
    finally:
        for app in apps:
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


async def budget_code(
    inventory: InventoryHarness,
    db: asyncpg.Connection,
    project_id: str,
    *,
    code: str,
    name: str = "grant",
    funding: str = "10000",
    valid_to: date | None = None,
) -> str:
    """Create a budget code through auth; return its id once the inventory has it."""
    today = date.today()
    created = await inventory.auth.call(
        "budget_codes.create",
        {
            "project_id": project_id,
            "code": code,
            "name": name,
            "funding_amount": funding,
            "currency": "EUR",
            "valid_from": str(today - timedelta(days=30)),
            "valid_to": str(valid_to or today + timedelta(days=365)),
        },
        token=inventory.auth.tokens["admin"],
    )

    async def projected() -> bool:
        found = await db.fetchval(
            "SELECT count(*) FROM inventory.budget WHERE id = $1", uuid.UUID(created["id"])
        )
        return bool(found)

    await wait_until(projected, 20, f"budget code {code} reaches the inventory")
    return str(created["id"])


async def funded_project(
    inventory: InventoryHarness,
    db: asyncpg.Connection,
    *,
    name: str,
    pi_id: str,
    member_id: str,
    code: str,
    funding: str = "10000",
    valid_to: date | None = None,
) -> tuple[str, str]:
    """A project with its PI, one member and a budget code, created through auth; return the
    project's and the code's ids once the inventory has them."""
    auth = inventory.auth
    admin = auth.tokens["admin"]
    project = await auth.call("projects.create", {"name": name, "pi_user_id": pi_id}, token=admin)
    await auth.call(
        "projects.add_member",
        {"project_id": project["id"], "user_id": member_id, "role": "member"},
        token=admin,
    )
    code_id = await budget_code(
        inventory, db, project["id"], code=code, funding=funding, valid_to=valid_to
    )
    return str(project["id"]), code_id


async def make_lab(
    inventory: InventoryHarness,
    db: asyncpg.Connection,
    *,
    hosts: int = 2,
    host_vcpus: int = 8,
    funding: str = "10000",
    valid_to: date | None = None,
    host_uris: dict[str, str] | None = None,
    gpu_labels: dict[str, str] | None = None,
) -> Lab:
    """Create people, project, grant (through auth) and a catalogue (through inventory).

    Hosts are ``h0``, ``h1``, ... and ``gpu0``; ``host_uris`` gives some of them a libvirt URI
    of their own (host name -> URI, else ``test:///default``) and ``gpu_labels`` adds labels to
    ``gpu0``.
    """
    uris = host_uris or {}
    auth = inventory.auth
    admin = auth.tokens["admin"]
    suffix = tag()
    pi_id, pi_email = await auth.user("pi")
    member_id, member_email = await auth.user("member")
    _, outsider_email = await auth.user("member")
    _, finance_email = await auth.user("finance")
    project_id, budget_code_id = await funded_project(
        inventory,
        db,
        name=f"lab-{suffix}",
        pi_id=pi_id,
        member_id=member_id,
        code=f"G-{suffix}",
        funding=funding,
        valid_to=valid_to,
    )
    dc = f"dc-{suffix}"
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
                "libvirt_uri": uris.get(name, DEFAULT_URI),
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
            "libvirt_uri": uris.get("gpu0", DEFAULT_URI),
            "vcpus": 16,
            "memory_mib": 65536,
            "disk_gib": 1000,
            "cpu_overcommit": "1.0",
            "gpus": {"a100": 2},
            "labels": {"gpu": "a100", **LAB_GPU_LABELS, **(gpu_labels or {})},
        },
        token=admin,
    )
    host_ids["gpu0"] = gpu_host["id"]
    image = await call(
        "images.create",
        {"name": f"img-{suffix}", "system_type": "linux", "source": "/images/linux.qcow2"},
        token=admin,
    )
    tier = await call(
        "price_tiers.create",
        {
            "name": f"tier-{suffix}",
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
                "name": f"{kind}-{suffix}",
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
        project_id=project_id,
        budget_code_id=budget_code_id,
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


class Commands(StreamWatch):
    """The provisioning commands the inventory published for one datacenter, in order."""

    def __init__(self, nc: NatsClient, datacenter: str) -> None:
        super().__init__(nc, "PROVISION", f"provision.{datacenter}.>", deliver=DeliverPolicy.ALL)


@pytest.fixture
async def commands(inventory: InventoryHarness, lab: Lab) -> AsyncIterator[Commands]:
    """The lab datacenter's provisioning commands."""
    async with Commands(inventory.nc, lab.datacenter) as watcher:
        yield watcher


class Placed(Protocol):
    """A provisioning command: it names the instance and where it is."""

    @property
    def instance_id(self) -> UUID: ...
    @property
    def datacenter(self) -> str: ...
    @property
    def host(self) -> str: ...


def report(kind: Callable[..., E], command: Placed, **fields: Any) -> E:
    """A provisioner report about the instance of a command, from the host it names."""
    return kind(
        instance_id=command.instance_id,
        datacenter=command.datacenter,
        host=command.host,
        **fields,
    )


def started(command: Placed, **fields: Any) -> InstanceStarted:
    """The provisioner's report that the instance runs (now, unless ``occurred_at`` says)."""
    at = fields.pop("occurred_at", None) or utc_now()
    return report(
        InstanceStarted,
        command,
        domain_uuid=uuid.uuid4(),
        started_at=at,
        occurred_at=at,
        **fields,
    )


def stopped(command: Placed, **fields: Any) -> InstanceStopped:
    """The provisioner's report that the instance stopped (now, unless ``occurred_at`` says)."""
    at = fields.pop("occurred_at", None) or utc_now()
    return report(InstanceStopped, command, stopped_at=at, occurred_at=at, **fields)


async def applied(db: asyncpg.Connection, event: Event, timeout_s: float = 15) -> None:
    """Wait until the inventory's consumer of the event has applied (or ignored) it."""

    async def done() -> bool:
        found = await db.fetchval(
            "SELECT count(*) FROM inventory.inbox WHERE event_id = $1", event.event_id
        )
        return bool(found)

    await wait_until(done, timeout_s, f"{type(event).__name__} {event.event_id} applied")


async def claim_count(db: asyncpg.Connection, instance_id: str) -> int:
    """Claim rows of one instance (0 or 1)."""
    return int(
        await db.fetchval(
            "SELECT count(*) FROM inventory.claim WHERE id = $1", uuid.UUID(instance_id)
        )
    )


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


async def running_instance(
    inventory: InventoryHarness, lab: Lab, commands: Commands, **overrides: Any
) -> tuple[dict[str, Any], InstanceScheduled]:
    """Request an instance and play the provisioner until it runs; return the running
    instance and its scheduling command."""
    created = await inventory.call("instances.request", lab.request(**overrides), token=lab.member)
    assert created["state"] == "scheduled", created
    scheduled = await commands.wait_for(InstanceScheduled, created["id"])
    await inventory.publish(started(scheduled))
    return await wait_state(inventory, lab, created["id"], "running"), scheduled
