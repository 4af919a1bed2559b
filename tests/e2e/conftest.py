"""End to end: the real inventory service and a real provisioner worker in this process, on real
Postgres and NATS, with simulated libvirt hosts (``test:///`` node files) under the worker.

A researcher's request goes through the inventory's RPC, placement and PROVISION commands to
the worker, which defines the domain on the simulated host the inventory chose; the worker's
reports come back through the PROVISIONER stream. A simulated host's domains live inside the
worker's own libvirt connection, so tests look them up through :meth:`Stack.domain`.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import asyncpg
import libvirt
import pytest

from compgrid_provisioner.adapters.hypervisor import find_domain
from compgrid_provisioner.adapters.simulated import SimulatedHost, write_hosts
from compgrid_provisioner.domain.domain_xml import NAMESPACE, Meta, read_meta
from tests.harness.servers import Servers
from tests.inventory.integration.conftest import (
    LAB_GPU_LABELS,
    InventoryHarness,
    Lab,
    inventory,
    make_lab,
    tag,
)
from tests.provisioner.integration.conftest import (
    REAL_POOL,
    Worker,
    provisioner_schema,
    running_worker,
)
from tests.runtime.integration.waiting import wait_until

__all__ = ["inventory", "provisioner_schema"]  # the session fixtures these tests run on

HOSTS = ("h0", "h1", "gpu0")
"""The hosts :func:`make_lab` registers (with its default of two CPU hosts)."""

SIZES = {"h0": (8, 32768), "h1": (8, 32768), "gpu0": (16, 65536)}
"""Each host's vCPUs and memory in MiB, as :func:`make_lab` registers them."""


def _json(value: Any) -> Any:
    """A JSONB column as asyncpg returns it (text) decoded."""
    return json.loads(value) if isinstance(value, str) else value


@dataclass
class Stack:
    """A lab whose hosts are simulated libvirt hosts, with the lab datacenter's worker."""

    inventory: InventoryHarness
    db: asyncpg.Connection
    lab: Lab
    worker: Worker
    uris: dict[str, str]
    """Host name -> libvirt URI (a node file of the test driver)."""

    def domain(self, host: str, instance_id: str) -> libvirt.virDomain | None:
        """The instance's domain on one host (its UUID is the instance id), or None."""
        return find_domain(self.worker.hypervisor(self.uris[host]), uuid.UUID(instance_id))

    def hosts_with(self, instance_id: str) -> list[str]:
        """Every host of the lab that has a domain of the instance."""
        return [name for name in self.uris if self.domain(name, instance_id) is not None]

    def volumes(self, host: str, instance_id: str) -> list[str]:
        """The instance's volumes in the host's storage pool."""
        conn = self.worker.hypervisor(self.uris[host])
        names = conn.storagePoolLookupByName(REAL_POOL).listVolumes()
        return sorted(name for name in names if instance_id in name)

    async def host(self, name: str) -> dict[str, Any]:
        """The host as the inventory's admin sees it (claims included)."""
        found: dict[str, Any] = await self.inventory.call(
            "hosts.get", {"host_id": self.lab.hosts[name]}, token=self.lab.admin
        )
        return found


def power(dom: libvirt.virDomain) -> int:
    """The domain's libvirt state (``VIR_DOMAIN_RUNNING``, ``VIR_DOMAIN_SHUTOFF``...)."""
    return int(dom.state()[0])


def meta_of(dom: libvirt.virDomain) -> Meta:
    """CompGrid's metadata written into the domain."""
    meta = read_meta(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE))
    assert meta is not None, "the domain carries no CompGrid metadata"
    return meta


def hostdev_addresses(dom: libvirt.virDomain) -> list[str]:
    """The PCI addresses of the domain's ``<hostdev>`` devices, as ``dddd:bb:ss.f``."""
    root = ET.fromstring(dom.XMLDesc())
    return [
        f"{int(a.get('domain', '0'), 16):04x}:{int(a.get('bus', '0'), 16):02x}:"
        f"{int(a.get('slot', '0'), 16):02x}.{int(a.get('function', '0'), 16):x}"
        for a in root.findall("./devices/hostdev/source/address")
    ]


async def hold_count(db: asyncpg.Connection, instance_id: str) -> int:
    """The inventory's admission holds of one instance (0 or 1)."""
    return int(
        await db.fetchval(
            "SELECT count(*) FROM inventory.hold WHERE instance_id = $1", uuid.UUID(instance_id)
        )
    )


async def hosts_known(
    db: asyncpg.Connection, datacenter: str, labels: dict[str, dict[str, str]]
) -> None:
    """Wait until the datacenter's worker has taken in each host's announcement, with at least
    the labels given (host name -> labels)."""

    async def known() -> bool:
        rows = await db.fetch(
            "SELECT name, labels FROM provisioner.host WHERE datacenter = $1", datacenter
        )
        seen = {row["name"]: _json(row["labels"]) for row in rows}
        return all(
            name in seen and all(seen[name].get(k) == v for k, v in wanted.items())
            for name, wanted in labels.items()
        )

    await wait_until(known, 15, f"hosts of {datacenter} known to its provisioner")


def simulated(directory: Path) -> dict[str, str]:
    """Node files for the lab's hosts, sized as the inventory registers them; name -> URI."""
    hosts = [SimulatedHost(name, vcpus=SIZES[name][0], memory_mib=SIZES[name][1]) for name in HOSTS]
    return write_hosts(directory, hosts, REAL_POOL)


StackFactory = Callable[..., contextlib.AbstractAsyncContextManager[Stack]]


@pytest.fixture
def simulated_lab(
    inventory: InventoryHarness,
    db: asyncpg.Connection,
    provisioner_schema: Servers,
    tmp_path: Path,
) -> StackFactory:
    """Make a lab on simulated hosts and run its datacenter's worker:
    ``async with simulated_lab(gpu_labels=..., **worker_overrides) as stack``."""

    @contextlib.asynccontextmanager
    async def make(
        gpu_labels: dict[str, str] | None = None, **overrides: Any
    ) -> AsyncIterator[Stack]:
        uris = simulated(tmp_path / f"hosts-{tag()}")
        lab = await make_lab(inventory, db, host_uris=uris, gpu_labels=gpu_labels)
        async with running_worker(provisioner_schema, lab.datacenter, **overrides) as worker:
            wanted: dict[str, dict[str, str]] = {name: {} for name in HOSTS} | {
                "gpu0": {"gpu": "a100", **LAB_GPU_LABELS, **(gpu_labels or {})}
            }
            await hosts_known(db, lab.datacenter, wanted)
            yield Stack(inventory, db, lab, worker, uris)

    return make
