"""The ``just dev`` demo catalogue: seeded once, requestable at once by the demo researcher."""

from __future__ import annotations

import asyncpg
import pytest

from compgrid_inventory.use_cases.demo import DATACENTER, HOSTS, TYPES, seed_demo
from tests.inventory.integration.conftest import InventoryHarness

pytestmark = [pytest.mark.postgres, pytest.mark.nats]


async def test_demo_catalogue_is_seeded_once_with_priced_types(
    inventory: InventoryHarness, db: asyncpg.Connection
) -> None:
    line = await seed_demo(inventory.deps)
    assert f"datacenter {DATACENTER} with {len(HOSTS)} simulated hosts" in line
    again = await seed_demo(inventory.deps)
    assert again == line
    hosts = await db.fetch(
        "SELECT h.name, h.libvirt_uri FROM inventory.host h JOIN inventory.datacenter d"
        " ON d.id = h.datacenter_id WHERE d.name = $1",
        DATACENTER,
    )
    assert sorted(h["name"] for h in hosts) == sorted(h[0] for h in HOSTS)
    assert all(h["libvirt_uri"].startswith("test:///") for h in hosts)
    admin = inventory.auth.tokens["admin"]
    listed = {t["name"]: t for t in await inventory.call("types.list", {}, token=admin)}
    for name, *_ in TYPES:
        assert listed[name]["hourly_price"]["currency"] == "EUR"
    # small: 1 vCPU x 0.02 + 2 GiB x 0.005 + 20 GiB x 0.04 / 730 per hour
    assert listed["small"]["hourly_price"]["amount"] == "0.031096"
    assert listed["gpu.a100"]["gpus"] == {"a100": 1}
