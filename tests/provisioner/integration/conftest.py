"""Provisioner workers in-process (or as their own processes) on real Postgres, NATS and libvirt.

Tests play the inventory: they announce hosts (``HostRegistered``) and publish provisioning
commands to the PROVISION stream exactly as the inventory does, and read the results and usage
ticks back from the PROVISIONER and USAGE streams. Simulated hosts are libvirt ``test:///``
node files; real guests run under QEMU (``qemu:///system``, software emulation).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import libvirt
import nats
import pytest
from nats.aio.client import Client as NatsClient

from compgrid_events import Event
from compgrid_events.inventory import (
    GpuCount,
    HostRegistered,
    HostState,
    InstanceDeleteRequested,
    InstanceRebootRequested,
    InstanceScheduled,
    InstanceStartRequested,
    InstanceStopRequested,
    Resources,
)
from compgrid_events.provisioner import UsageTick
from compgrid_provisioner.adapters.simulated import SimulatedHost, write_hosts
from compgrid_provisioner.bootstrap import build
from compgrid_provisioner.config import Settings
from compgrid_provisioner.use_cases.deps import Deps
from compgrid_runtime.app import ServiceApp
from tests.harness.servers import Servers, with_service_schema
from tests.harness.streams import StreamWatch

QEMU_URI = "qemu:///system"
REAL_POOL = "compgrid-test"
REAL_POOL_PATH = "/var/lib/libvirt/images/compgrid-test"


def tag() -> str:
    """A short random suffix for names that must be unique in the run."""
    return uuid.uuid4().hex[:8]


def qemu_problem() -> str | None:
    """Why real QEMU guests cannot run here, or None when they can."""
    try:
        conn = libvirt.open(QEMU_URI)
    except libvirt.libvirtError as exc:
        return f"libvirtd does not answer on {QEMU_URI}: {exc} (run scripts/bootstrap.sh as root)"
    try:
        conn.getDomainCapabilities(None, "x86_64", None, "qemu")
    except libvirt.libvirtError as exc:
        return f"libvirt has no x86_64 QEMU here: {exc}"
    finally:
        conn.close()
    return None


@pytest.fixture(scope="session")
def qemu() -> str:
    """The real hypervisor's URI; skips loudly where it cannot be set up, fails in CI."""
    problem = qemu_problem()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the real-guest tests: {problem}")
        pytest.skip(f"REAL HYPERVISOR UNAVAILABLE: {problem}")
    return QEMU_URI


@pytest.fixture(scope="session")
async def provisioner_schema(real: Servers) -> Servers:
    """The run's database with the provisioner's schema, and every stream in place."""
    return await with_service_schema(real, "compgrid_provisioner")


def worker_settings(real: Servers, datacenter: str, **overrides: Any) -> Settings:
    """Settings of a worker fast enough for tests (sub-second ticks and reconcile)."""
    values: dict[str, Any] = {
        "database_url": real.database_url,
        "nats_url": real.nats_url,
        "redis_url": real.redis_url,
        "log_level": "WARNING",
        "datacenter": datacenter,
        "tick_interval_s": 0.3,
        "reconcile_interval_s": 0.6,
        "stop_timeout_s": 1.0,
        "orphan_grace_s": 6.0,
        "host_retry_initial_s": 0.2,
        "host_retry_max_s": 1.0,
        "host_unreachable_after_s": 1.0,
        "command_ack_wait_s": 3.0,
        "outbox_poll_interval_s": 0.05,
        "domain_type": "qemu",
        "network": "none",
        "storage_pool": REAL_POOL,
        "storage_pool_path": REAL_POOL_PATH,
    }
    values.update(overrides)
    return Settings(**values)


def worker_environment(real: Servers, datacenter: str, **overrides: Any) -> dict[str, str]:
    """The same settings as environment variables, for a worker in its own process."""
    settings = worker_settings(real, datacenter, **overrides)
    env = dict(os.environ)
    for name in (
        "database_url",
        "nats_url",
        "redis_url",
        "datacenter",
        "tick_interval_s",
        "reconcile_interval_s",
        "stop_timeout_s",
        "orphan_grace_s",
        "host_retry_initial_s",
        "host_retry_max_s",
        "host_unreachable_after_s",
        "command_ack_wait_s",
        "outbox_poll_interval_s",
        "domain_type",
        "network",
        "storage_pool",
        "storage_pool_path",
    ):
        env[f"COMPGRID_PROVISIONER_{name.upper()}"] = str(getattr(settings, name))
    env["COMPGRID_PROVISIONER_HTTP_PORT"] = "0"
    env["COMPGRID_PROVISIONER_LOG_LEVEL"] = "INFO"
    return env


def spawn_worker(real: Servers, datacenter: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """A worker in a process of its own (``compgrid-provisioner``), its output in ``log``."""
    return subprocess.Popen(
        [sys.executable, "-m", "compgrid_provisioner"],
        env=worker_environment(real, datacenter) | env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


@dataclass
class Worker:
    """A running provisioner worker in this process."""

    app: ServiceApp
    deps: Deps

    def hypervisor(self, uri: str) -> Any:
        """The worker's own connection to a host (a simulated host's state lives in it)."""
        return self.deps.hosts.hypervisor(uri).connect()


@contextlib.asynccontextmanager
async def running_worker(real: Servers, datacenter: str, **overrides: Any) -> AsyncIterator[Worker]:
    """Start a worker for one datacenter; stop it after."""
    app, deps = build(worker_settings(real, datacenter, **overrides))
    await app.start()
    try:
        yield Worker(app, deps)
    finally:
        await app.stop()


@dataclass
class Datacenter:
    """A datacenter the test plays the inventory for: hosts, commands and what comes back."""

    name: str
    nc: NatsClient
    hosts: dict[str, str] = field(default_factory=dict)
    versions: dict[UUID, int] = field(default_factory=dict)
    host_of: dict[UUID, str] = field(default_factory=dict)
    results: StreamWatch | None = None
    usage: StreamWatch | None = None

    async def publish(self, event: Event) -> None:
        """Publish an event as its owning service would."""
        await self.nc.jetstream().publish(
            event.subject, event.to_json(), headers={"Nats-Msg-Id": str(event.event_id)}
        )

    async def add_host(
        self, name: str, uri: str, *, labels: dict[str, str] | None = None, version: int = 1
    ) -> None:
        """Announce a host as the inventory does."""
        self.hosts[name] = uri
        await self.publish(
            HostRegistered(
                host_id=uuid.uuid5(uuid.NAMESPACE_URL, f"{self.name}/{name}"),
                name=name,
                datacenter=self.name,
                libvirt_uri=uri,
                state=HostState.ACTIVE,
                capacity=Resources(vcpus=64, memory_mib=262144, disk_gib=4000),
                labels=labels or {},
                version=version,
            )
        )

    def _next(self, instance_id: UUID) -> int:
        self.versions[instance_id] = self.versions.get(instance_id, 0) + 1
        return self.versions[instance_id]

    def schedule(
        self,
        host: str,
        *,
        instance_id: UUID | None = None,
        vcpus: int = 1,
        memory_mib: int = 32,
        disk_gib: int = 0,
        gpus: dict[str, int] | None = None,
        image_source: str = "",
        ssh_public_key: str | None = None,
        project_id: UUID | None = None,
        budget_code_id: UUID | None = None,
    ) -> InstanceScheduled:
        """A create command (not yet published) for a new instance on one of our hosts."""
        instance_id = instance_id or uuid.uuid4()
        self.host_of[instance_id] = host
        return InstanceScheduled(
            instance_id=instance_id,
            version=self._next(instance_id),
            datacenter=self.name,
            host=host,
            host_uri=self.hosts[host],
            name=f"vm-{str(instance_id)[:8]}",
            project_id=project_id or uuid.uuid4(),
            budget_code_id=budget_code_id or uuid.uuid4(),
            resources=Resources(
                vcpus=vcpus,
                memory_mib=memory_mib,
                disk_gib=disk_gib,
                gpus=tuple(GpuCount(model=m, count=c) for m, c in (gpus or {}).items()),
            ),
            image="test-image",
            image_source=image_source,
            ssh_public_key=ssh_public_key,
        )

    def command(self, kind: Callable[..., Event], instance_id: UUID, **fields: Any) -> Any:
        """A start/stop/reboot/delete command for an instance, with the next version."""
        return kind(
            instance_id=instance_id,
            version=self._next(instance_id),
            datacenter=self.name,
            host=self.host_of[instance_id],
            **fields,
        )

    def stop(self, instance_id: UUID) -> InstanceStopRequested:
        return self.command(InstanceStopRequested, instance_id)

    def start(self, instance_id: UUID) -> InstanceStartRequested:
        return self.command(InstanceStartRequested, instance_id)

    def reboot(self, instance_id: UUID) -> InstanceRebootRequested:
        return self.command(InstanceRebootRequested, instance_id)

    def delete(self, instance_id: UUID) -> InstanceDeleteRequested:
        return self.command(InstanceDeleteRequested, instance_id)

    async def ticks(self) -> list[UsageTick]:
        """Every usage tick of this datacenter seen so far."""
        assert self.usage is not None
        return [e for e in await self.usage.events() if isinstance(e, UsageTick)]

    async def intervals(self, instance_id: UUID) -> list[tuple[Any, Any, int]]:
        """The ``[from, to)`` intervals and CPU time sent for an instance, in order."""
        found = [
            (s.started_at, s.ended_at, s.cpu_time_ns)
            for tick in await self.ticks()
            for s in tick.samples
            if s.instance_id == instance_id
        ]
        return sorted(found)


@pytest.fixture
async def datacenter(provisioner_schema: Servers) -> AsyncIterator[Datacenter]:
    """A fresh datacenter name with watches on its results and usage."""
    client = await nats.connect(provisioner_schema.nats_url)
    name = f"dc-{tag()}"
    dc = Datacenter(name, client)
    dc.results = await StreamWatch(client, "PROVISIONER", f"provisioner.{name}.>").start()
    dc.usage = await StreamWatch(client, "USAGE", f"usage.{name}.>").start()
    yield dc
    await dc.results.stop()
    await dc.usage.stop()
    await client.close()


@pytest.fixture
def simulated_hosts(tmp_path: Path) -> Callable[..., dict[str, str]]:
    """Write simulated host node files; return name → URI."""

    def make(count: int = 2, prefix: str = "sim-") -> dict[str, str]:
        hosts = [SimulatedHost(f"{prefix}{i}") for i in range(count)]
        return write_hosts(tmp_path / f"hosts-{tag()}", hosts, REAL_POOL)

    return make
