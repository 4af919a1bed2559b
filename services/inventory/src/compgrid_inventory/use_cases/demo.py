"""The ``just dev`` demo catalogue: a datacenter of simulated hosts, images, prices, types.

The hosts use libvirt's test driver, so a newcomer can request an instance at once without a
hypervisor. Idempotent: when the demo datacenter exists, nothing is changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import select

from compgrid_events import uuid7
from compgrid_events.inventory_api import (
    CreateDatacenter,
    CreateImage,
    CreateInstanceType,
    CreatePriceTier,
    Rates,
    RegisterHost,
)
from compgrid_inventory.adapters.tables import datacenter
from compgrid_inventory.use_cases import catalog
from compgrid_inventory.use_cases.deps import Deps
from compgrid_runtime.rpc import Caller
from compgrid_runtime.tokens import Principal

DATACENTER = "demo-dc"
OPERATOR = Caller(Principal(user_id=uuid7(), roles=frozenset({"admin"})), "demo")
HOSTS: tuple[tuple[str, int, int, int, dict[str, int], dict[str, str]], ...] = (
    ("demo-host-01", 32, 128 * 1024, 2000, {}, {"ssd": "yes"}),
    ("demo-host-02", 32, 128 * 1024, 2000, {}, {"ssd": "yes"}),
    ("demo-host-03", 64, 256 * 1024, 4000, {}, {}),
    (
        "demo-gpu-01",
        32,
        256 * 1024,
        4000,
        {"a100": 4},
        # The provisioner passes these PCI devices through to GPU instances.
        {"gpu": "a100", "gpu.pci.a100": "0000:81:00.0,0000:82:00.0,0000:c1:00.0,0000:c2:00.0"},
    ),
)
IMAGES = (
    ("ubuntu-24.04", "linux", "/var/lib/compgrid/images/ubuntu-24.04.qcow2", "ubuntu"),
    ("debian-12", "linux", "/var/lib/compgrid/images/debian-12.qcow2", "debian"),
    ("rocky-9", "linux", "/var/lib/compgrid/images/rocky-9.qcow2", "rocky"),
)
TYPES: tuple[tuple[str, int, int, int, dict[str, int]], ...] = (
    ("small", 1, 2 * 1024, 20, {}),
    ("medium", 2, 8 * 1024, 40, {}),
    ("large", 8, 32 * 1024, 100, {}),
    ("gpu.a100", 8, 64 * 1024, 200, {"a100": 1}),
)


async def seed_demo(deps: Deps, host_uris: Mapping[str, str] | None = None) -> str:
    """Create the demo catalogue unless it exists; return one line saying what is there.

    ``host_uris`` gives a demo host its libvirt URI (``just dev`` writes a simulated host per
    demo host); a host not named there gets libvirt's built-in test host.
    """
    async with deps.uow() as uow:
        exists = await uow.session.scalar(
            select(datacenter.c.id).where(datacenter.c.name == DATACENTER)
        )
    if exists is None:
        await _seed(deps, host_uris or {})
    return (
        f"demo catalogue: datacenter {DATACENTER} with {len(HOSTS)} simulated hosts,"
        f" images {', '.join(i[0] for i in IMAGES)}, types {', '.join(t[0] for t in TYPES)}"
    )


async def _seed(deps: Deps, host_uris: Mapping[str, str]) -> None:
    await catalog.create_datacenter(
        deps, OPERATOR, CreateDatacenter(name=DATACENTER, description="Simulated demo hosts")
    )
    for name, vcpus, memory, disk, gpus, labels in HOSTS:
        await catalog.register_host(
            deps,
            OPERATOR,
            RegisterHost(
                datacenter=DATACENTER,
                name=name,
                libvirt_uri=host_uris.get(name, "test:///default"),
                vcpus=vcpus,
                memory_mib=memory,
                disk_gib=disk,
                gpus=gpus,
                labels=labels,
            ),
        )
    for name, system, source, user in IMAGES:
        await catalog.create_image(
            deps,
            OPERATOR,
            CreateImage(name=name, system_type=system, source=source, default_user=user),
        )
    tier = await catalog.create_price_tier(
        deps,
        OPERATOR,
        CreatePriceTier(
            name="standard",
            currency="EUR",
            effective_from=datetime(2026, 1, 1, tzinfo=UTC),
            rates=Rates(
                vcpu_hour=Decimal("0.02"),
                memory_gib_hour=Decimal("0.005"),
                storage_gib_month=Decimal("0.04"),
                gpu_hour={"a100": Decimal("1.50")},
            ),
        ),
    )
    for name, vcpus, memory, disk, gpus in TYPES:
        await catalog.create_instance_type(
            deps,
            OPERATOR,
            CreateInstanceType(
                name=name,
                vcpus=vcpus,
                memory_mib=memory,
                disk_gib=disk,
                gpus=gpus,
                system_types=["linux"],
                price_tier_id=tier.id,
            ),
        )
