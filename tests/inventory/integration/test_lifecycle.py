"""The instance lifecycle end to end: requests become provisioning commands, provisioner
reports move the state, late and repeated reports never move it backwards, claims come back."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from compgrid_events.inventory import (
    InstanceDeleteRequested,
    InstanceRebootRequested,
    InstanceScheduled,
    InstanceStartRequested,
    InstanceStopRequested,
)
from compgrid_events.provisioner import InstanceDeleted
from tests.inventory.integration.conftest import (
    Commands,
    InventoryHarness,
    Lab,
    report,
    started,
    stopped,
    wait_state,
)

pytestmark = [pytest.mark.postgres, pytest.mark.nats]


async def claimed(db: asyncpg.Connection, host_id: str) -> int:
    value = await db.fetchval(
        "SELECT claimed_vcpus FROM inventory.host WHERE id = $1", uuid.UUID(host_id)
    )
    return int(value)


async def test_request_start_stop_start_delete(
    inventory: InventoryHarness, lab: Lab, commands: Commands, db: asyncpg.Connection
) -> None:
    created = await inventory.call("instances.request", lab.request("web"), token=lab.member)
    assert created["state"] == "scheduled"
    assert created["version"] == 2
    assert created["datacenter"] == lab.datacenter
    iid = created["id"]
    scheduled = await commands.wait_for(InstanceScheduled, iid)
    assert scheduled.resources.vcpus == 2
    assert scheduled.host_uri == "test:///default"
    assert scheduled.image_source == "/images/linux.qcow2"
    host_id = lab.hosts[scheduled.host]
    assert await claimed(db, host_id) == 2

    await inventory.publish(started(scheduled, addresses=("10.0.0.5",)))
    running = await wait_state(inventory, lab, iid, "running")
    assert running["addresses"] == ["10.0.0.5"]

    stopping = await inventory.call("instances.stop", {"instance_id": iid}, token=lab.member)
    assert stopping["state"] == "stopping"
    await commands.wait_for(InstanceStopRequested, iid)
    await inventory.publish(stopped(scheduled))
    await wait_state(inventory, lab, iid, "stopped")
    assert await claimed(db, host_id) == 2, "a stopped instance keeps its place on the host"

    starting = await inventory.call("instances.start", {"instance_id": iid}, token=lab.member)
    assert starting["state"] == "starting"
    await commands.wait_for(InstanceStartRequested, iid)
    await inventory.publish(started(scheduled))
    await wait_state(inventory, lab, iid, "running")

    await inventory.call("instances.reboot", {"instance_id": iid}, token=lab.member)
    await commands.wait_for(InstanceRebootRequested, iid)

    deleting = await inventory.call("instances.delete", {"instance_id": iid}, token=lab.member)
    assert deleting["state"] == "deleting"
    await commands.wait_for(InstanceDeleteRequested, iid)
    assert await claimed(db, host_id) == 2, "capacity is freed once the domain is gone"
    await inventory.publish(report(InstanceDeleted, scheduled))
    gone = await wait_state(inventory, lab, iid, "deleted")
    assert await claimed(db, host_id) == 0
    assert gone["version"] > running["version"]
