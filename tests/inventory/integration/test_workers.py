"""Datacenters and their provisioner workers: placement only where a worker is live, commands
nobody takes up fail their instance, an instance that never reached a hypervisor is deleted
without one, and the datacenters list and the utilisation show each worker and when it was
last heard from."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg
import pytest

from compgrid_events.base import utc_now
from compgrid_events.inventory import InstanceDeleteRequested
from tests.inventory.integration.conftest import (
    COMMAND_TIMEOUT_S,
    Commands,
    InventoryHarness,
    Lab,
    claim_count,
    wait_state,
)
from tests.runtime.integration.waiting import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.nats]


async def hold_count(db: asyncpg.Connection, instance_id: str) -> int:
    """The admission holds of one instance (0 or 1)."""
    found = await db.fetchval(
        "SELECT count(*) FROM inventory.hold WHERE instance_id = $1::uuid", instance_id
    )
    return int(found)


async def test_refuses_placement_in_a_datacenter_without_a_live_worker(
    inventory: InventoryHarness, lab: Lab, db: asyncpg.Connection
) -> None:
    await inventory.unserve(lab.datacenter)
    refused = await inventory.call("instances.request", lab.request(), token=lab.member)
    assert refused["state"] == "rejected"
    assert refused["reason_code"] == "no_provisioner"
    assert refused["reason"] == f"no provisioner is running for datacenter {lab.datacenter}"
    assert await claim_count(db, refused["id"]) == 0
    assert await hold_count(db, refused["id"]) == 0

    await inventory.serve(lab.datacenter)  # a worker comes back: placement uses it again
    placed = await inventory.call("instances.request", lab.request(), token=lab.member)
    assert placed["state"] == "scheduled", placed


async def test_an_instance_whose_worker_died_fails_after_the_bound_and_gives_its_claim_back(
    inventory: InventoryHarness, lab: Lab, db: asyncpg.Connection, commands: Commands
) -> None:
    await inventory.serve(lab.datacenter, interval_s=1.0)  # dies: no beat after this one
    placed = await inventory.call("instances.request", lab.request(), token=lab.member)
    assert placed["state"] == "scheduled", placed
    assert await claim_count(db, placed["id"]) == 1
    assert await hold_count(db, placed["id"]) == 1

    failed = await wait_state(inventory, lab, placed["id"], "failed", timeout_s=30)
    assert failed["reason_code"] == "no_provisioner"
    assert failed["reason"].startswith(
        f"no provisioner is running for datacenter {lab.datacenter}"
    ), failed["reason"]
    assert await claim_count(db, placed["id"]) == 0
    assert await hold_count(db, placed["id"]) == 0
    scheduled_at = datetime.fromisoformat(placed["updated_at"])
    failed_at = datetime.fromisoformat(failed["updated_at"])
    assert failed_at - scheduled_at >= timedelta(seconds=COMMAND_TIMEOUT_S)

    async def cleanup_sent() -> bool:
        return bool(await commands.matching(InstanceDeleteRequested, placed["id"]))

    await wait_until(cleanup_sent, 15, "a delete for whatever a late worker creates")

    deleted = await inventory.call(
        "instances.delete", {"instance_id": placed["id"]}, token=lab.member
    )
    assert deleted["state"] == "deleted", deleted


async def test_deleting_an_instance_that_never_reached_a_hypervisor_completes(
    inventory: InventoryHarness, lab: Lab, db: asyncpg.Connection
) -> None:
    placed = await inventory.call("instances.request", lab.request(), token=lab.member)
    await inventory.unserve(lab.datacenter)
    deleted = await inventory.call(
        "instances.delete", {"instance_id": placed["id"]}, token=lab.member
    )
    assert deleted["state"] == "deleted", deleted
    assert await claim_count(db, placed["id"]) == 0
    again = await inventory.refused(
        "instances.delete", {"instance_id": placed["id"]}, token=lab.member
    )
    assert again.status == 409


async def test_a_delete_left_by_a_worker_that_died_completes_after_the_bound(
    inventory: InventoryHarness, lab: Lab, db: asyncpg.Connection
) -> None:
    placed = await inventory.call("instances.request", lab.request(), token=lab.member)
    await inventory.serve(lab.datacenter, interval_s=1.0)  # live now, dead soon
    deleting = await inventory.call(
        "instances.delete", {"instance_id": placed["id"]}, token=lab.member
    )
    assert deleting["state"] == "deleting", deleting
    await wait_state(inventory, lab, placed["id"], "deleted", timeout_s=30)
    assert await claim_count(db, placed["id"]) == 0


async def test_datacenters_and_utilisation_show_each_worker_and_when_it_was_last_seen(
    inventory: InventoryHarness, lab: Lab
) -> None:
    before = utc_now()
    await inventory.serve(lab.datacenter)
    listed = await inventory.call("datacenters.list", {}, token=lab.member)
    mine = next(dc for dc in listed if dc["name"] == lab.datacenter)
    assert len(mine["workers"]) == 1, mine
    worker = mine["workers"][0]
    assert worker["worker_id"] == f"played-{lab.datacenter}"
    assert worker["live"] is True
    assert datetime.fromisoformat(worker["last_seen_at"]) >= before - timedelta(seconds=1)

    shown = await inventory.call(
        "cluster.utilisation", {"datacenter": lab.datacenter}, token=lab.admin
    )
    assert [w["worker_id"] for w in shown[0]["workers"]] == [worker["worker_id"]]

    await inventory.unserve(lab.datacenter)
    listed = await inventory.call("datacenters.list", {}, token=lab.member)
    mine = next(dc for dc in listed if dc["name"] == lab.datacenter)
    assert [w["live"] for w in mine["workers"]] == [False], "a stopped worker is shown, not live"
