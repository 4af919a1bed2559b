"""Provisioner reports as the inventory applies them: once, in the order they happened, only
where they are a step forward; a report about nothing known goes to the dead letters; a host
the provisioner cannot reach is marked down and takes no new work."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import pytest
from nats.aio.msg import Msg

from compgrid_events import uuid7
from compgrid_events.base import utc_now
from compgrid_events.inventory import (
    HostRegistered,
    InstanceDeleteRequested,
    InstanceScheduled,
    InstanceStateChanged,
    InstanceStopRequested,
)
from compgrid_events.provisioner import (
    HostUnreachable,
    InstanceDeleted,
    InstanceFailed,
    InstanceStarted,
)
from tests.harness.streams import StreamWatch
from tests.inventory.integration.conftest import (
    Commands,
    InventoryHarness,
    Lab,
    applied,
    claim_count,
    make_lab,
    report,
    running_instance,
    started,
    state_of,
    stopped,
    wait_state,
)
from tests.runtime.integration.waiting import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.nats]


RESULTS_CONSUMER = "inventory-provisioner-results"


async def host_claims(db: asyncpg.Connection, host_id: str) -> asyncpg.Record:
    row: asyncpg.Record = await db.fetchrow(
        "SELECT claimed_vcpus, claimed_memory_mib, claimed_disk_gib, state, version"
        " FROM inventory.host WHERE id = $1",
        uuid.UUID(host_id),
    )
    return row


async def hold_count(db: asyncpg.Connection, instance_id: str) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM inventory.hold WHERE instance_id = $1", uuid.UUID(instance_id)
        )
    )


async def test_a_repeated_report_changes_state_and_version_once(
    inventory: InventoryHarness, lab: Lab, commands: Commands, db: asyncpg.Connection
) -> None:
    async with StreamWatch.of(inventory.nc, InstanceStateChanged) as changes:
        created = await inventory.call("instances.request", lab.request(), token=lab.member)
        iid = created["id"]
        scheduled = await commands.wait_for(InstanceScheduled, iid)
        first = started(scheduled, addresses=("10.0.0.7",))
        # The same event twice (JetStream's duplicate window drops the second copy) ...
        await inventory.publish(first)
        await inventory.publish(first)
        # ... once more past that window, as a redelivery would come: the inbox must drop it ...
        await inventory.nc.jetstream().publish(
            first.subject, first.to_json(), headers={"Nats-Msg-Id": f"again-{first.event_id}"}
        )
        # ... and the same report under a new id, as a provisioner resending it would.
        twin = first.model_copy(update={"event_id": uuid7()})
        await inventory.publish(twin)
        await applied(db, twin)

        after = await state_of(inventory, lab, iid)
        assert after["state"] == "running"
        assert after["version"] == created["version"] + 1, "one report, one version step"
        assert after["addresses"] == ["10.0.0.7"]

        await changes.wait_for(
            InstanceStateChanged, iid, where=lambda e: e.state.value == "running", timeout_s=10
        )
        await asyncio.sleep(0.5)  # let anything the repeats could have caused arrive
        mine = await changes.matching(InstanceStateChanged, iid)
    assert [e.state.value for e in mine if e.state.value == "running"] == ["running"]
    assert [e.version for e in mine] == [1, 2, 3]
    inbox = await db.fetchval(
        "SELECT count(*) FROM inventory.inbox WHERE consumer = $1 AND event_id = $2",
        RESULTS_CONSUMER,
        first.event_id,
    )
    assert inbox == 1


async def test_a_start_observed_before_a_stop_command_does_not_undo_it(
    inventory: InventoryHarness, lab: Lab, commands: Commands, db: asyncpg.Connection
) -> None:
    running, scheduled = await running_instance(inventory, lab, commands)
    iid = running["id"]
    before_stop = utc_now()  # the provisioner saw it running at this moment ...
    await asyncio.sleep(0.1)
    stopping = await inventory.call("instances.stop", {"instance_id": iid}, token=lab.member)
    assert stopping["state"] == "stopping"
    await commands.wait_for(InstanceStopRequested, iid)

    # ... and its report of that arrives only now, after the stop was commanded.
    late = started(scheduled, occurred_at=before_stop)
    await inventory.publish(late)
    await applied(db, late)
    now = await state_of(inventory, lab, iid)
    assert now["state"] == "stopping"
    assert now["version"] == stopping["version"]

    await inventory.publish(stopped(scheduled))
    halted = await wait_state(inventory, lab, iid, "stopped")
    later = started(scheduled, occurred_at=before_stop)
    await inventory.publish(later)
    await applied(db, later)
    now = await state_of(inventory, lab, iid)
    assert now["state"] == "stopped", "a start seen before the stop must not revive it"
    assert now["version"] == halted["version"]


async def test_a_stop_older_than_the_start_applied_is_ignored(
    inventory: InventoryHarness, lab: Lab, commands: Commands, db: asyncpg.Connection
) -> None:
    created = await inventory.call("instances.request", lab.request(), token=lab.member)
    iid = created["id"]
    scheduled = await commands.wait_for(InstanceScheduled, iid)
    await asyncio.sleep(0.05)
    old_stop = stopped(scheduled)  # observed after the command, before the start below
    await asyncio.sleep(0.05)
    await inventory.publish(started(scheduled))
    running = await wait_state(inventory, lab, iid, "running")

    await inventory.publish(old_stop)
    await applied(db, old_stop)
    now = await state_of(inventory, lab, iid)
    assert now["state"] == "running"
    assert now["version"] == running["version"]


async def test_a_deletion_report_for_a_running_instance_deletes_it_and_later_reports_are_ignored(
    inventory: InventoryHarness, lab: Lab, commands: Commands, db: asyncpg.Connection
) -> None:
    running, scheduled = await running_instance(inventory, lab, commands)
    iid = running["id"]
    host_id = lab.hosts[scheduled.host]
    assert (await host_claims(db, host_id))["claimed_vcpus"] == 2
    assert await claim_count(db, iid) == 1

    await inventory.publish(report(InstanceDeleted, scheduled))
    gone = await wait_state(inventory, lab, iid, "deleted")
    freed = await host_claims(db, host_id)
    assert (freed["claimed_vcpus"], freed["claimed_memory_mib"], freed["claimed_disk_gib"]) == (
        0,
        0,
        0,
    )
    assert await claim_count(db, iid) == 0
    assert await hold_count(db, iid) == 0

    # Reports that make no sense for a deleted instance (fresh ones, not late ones) change nothing.
    impossible = [
        started(scheduled),
        stopped(scheduled),
        report(InstanceFailed, scheduled, reason="domain crashed"),
    ]
    for event in impossible:
        await inventory.publish(event)
    for event in impossible:
        await applied(db, event)
    now = await state_of(inventory, lab, iid)
    assert now["state"] == "deleted"
    assert now["version"] == gone["version"]
    assert now["reason_code"] is None
    assert await claim_count(db, iid) == 0
    assert (await host_claims(db, host_id))["claimed_vcpus"] == 0


async def test_a_failure_keeps_its_reason_and_gives_claim_and_hold_back(
    inventory: InventoryHarness, lab: Lab, commands: Commands, db: asyncpg.Connection
) -> None:
    created = await inventory.call("instances.request", lab.request(), token=lab.member)
    iid = created["id"]
    scheduled = await commands.wait_for(InstanceScheduled, iid)
    host_id = lab.hosts[scheduled.host]
    assert await hold_count(db, iid) == 1
    assert await claim_count(db, iid) == 1
    assert (await host_claims(db, host_id))["claimed_vcpus"] == 2

    why = "virDomainCreateWithFlags: Cannot access storage file '/images/linux.qcow2'"
    await inventory.publish(report(InstanceFailed, scheduled, reason=why))
    failed = await wait_state(inventory, lab, iid, "failed")
    assert failed["reason_code"] == "provisioning_failed"
    assert failed["reason"] == why
    assert failed["version"] == created["version"] + 1
    assert await claim_count(db, iid) == 0
    assert await hold_count(db, iid) == 0
    assert (await host_claims(db, host_id))["claimed_vcpus"] == 0

    deleting = await inventory.call("instances.delete", {"instance_id": iid}, token=lab.member)
    assert deleting["state"] == "deleting"
    command = await commands.wait_for(InstanceDeleteRequested, iid)
    assert command.host == scheduled.host
    await inventory.publish(report(InstanceDeleted, scheduled))
    gone = await wait_state(inventory, lab, iid, "deleted")
    assert gone["version"] == deleting["version"] + 1
    assert (await host_claims(db, host_id))["claimed_vcpus"] == 0


async def test_a_report_about_an_unknown_instance_is_dead_lettered_and_the_next_applied(
    inventory: InventoryHarness, lab: Lab, commands: Commands, db: asyncpg.Connection
) -> None:
    created = await inventory.call("instances.request", lab.request(), token=lab.member)
    iid = created["id"]
    scheduled = await commands.wait_for(InstanceScheduled, iid)
    stray = InstanceStarted(
        instance_id=uuid.uuid4(),
        datacenter=lab.datacenter,
        host="h0",
        domain_uuid=uuid.uuid4(),
        started_at=utc_now(),
    )
    good = started(scheduled)

    async with StreamWatch(inventory.nc, "DEADLETTER", "deadletter.inventory.>") as dead:
        await inventory.publish(stray)
        await inventory.publish(good)
        found: list[Msg] = []

        async def dead_lettered() -> bool:
            found[:] = [
                m
                for m in await dead.collect()
                if json.loads(m.data).get("event_id") == str(stray.event_id)
            ]
            return bool(found)

        await wait_until(dead_lettered, 15, "the stray report in the dead-letter stream")
    letter = found[0]
    assert letter.subject == f"deadletter.inventory.{RESULTS_CONSUMER}"
    headers = letter.headers or {}
    assert headers.get("compgrid-dlq-subject") == stray.subject
    assert headers.get("compgrid-dlq-reason") == "rejected"
    assert str(stray.instance_id) in headers.get("compgrid-dlq-error", "")
    assert len(found) == 1

    await wait_state(inventory, lab, iid, "running")
    await applied(db, good)
    unapplied = await db.fetchval(
        "SELECT count(*) FROM inventory.inbox WHERE event_id = $1", stray.event_id
    )
    assert unapplied == 0
    known = await db.fetchval(
        "SELECT count(*) FROM inventory.instance WHERE id = $1", stray.instance_id
    )
    assert known == 0


async def test_an_unreachable_host_goes_down_and_takes_no_new_instances(
    inventory: InventoryHarness, lab: Lab, commands: Commands, db: asyncpg.Connection
) -> None:
    h0 = lab.hosts["h0"]
    before = await inventory.call("hosts.get", {"host_id": h0}, token=lab.admin)
    assert before["state"] == "active"
    subject = HostRegistered.subject_for(datacenter=lab.datacenter)
    assert subject == f"inventory.host.{lab.datacenter}.registered"

    async with StreamWatch(inventory.nc, "INVENTORY", subject) as registered:
        lost = HostUnreachable(datacenter=lab.datacenter, host="h0", reason="ssh: timed out")
        await inventory.publish(lost)
        await applied(db, lost)
        down = await inventory.call("hosts.get", {"host_id": h0}, token=lab.admin)
        assert down["state"] == "down"
        assert down["version"] == before["version"] + 1

        def h0_down(e: HostRegistered) -> bool:
            return str(e.host_id) == h0 and e.state.value == "down"

        await registered.wait_for(HostRegistered, where=h0_down, timeout_s=10)
        # The same news again changes nothing (and announces nothing).
        again = HostUnreachable(datacenter=lab.datacenter, host="h0", reason="ssh: timed out")
        await inventory.publish(again)
        await applied(db, again)
        await asyncio.sleep(0.3)
        downs = await registered.matching(HostRegistered, where=h0_down)
    assert len(downs) == 1
    event = downs[0]
    assert event.datacenter == lab.datacenter
    assert event.name == "h0"
    assert event.version == down["version"]
    assert event.capacity.vcpus == 8
    assert (await inventory.call("hosts.get", {"host_id": h0}, token=lab.admin))["version"] == down[
        "version"
    ]

    for _ in range(2):
        created = await inventory.call("instances.request", lab.request(), token=lab.member)
        assert created["state"] == "scheduled"
        scheduled = await commands.wait_for(InstanceScheduled, created["id"])
        assert scheduled.host != "h0"
    assert (await host_claims(db, h0))["claimed_vcpus"] == 0


async def test_with_its_only_host_down_a_datacenter_rejects_requests_for_capacity(
    inventory: InventoryHarness, db: asyncpg.Connection
) -> None:
    lab = await make_lab(inventory, db, hosts=0)  # the GPU host alone
    only = lab.hosts["gpu0"]
    fine = await inventory.call("instances.request", lab.request(), token=lab.member)
    assert fine["state"] == "scheduled", "the host takes CPU work while it is up"
    lost = HostUnreachable(datacenter=lab.datacenter, host="gpu0", reason="no route to host")
    await inventory.publish(lost)
    await applied(db, lost)
    assert (await host_claims(db, only))["state"] == "down"

    refused = await inventory.call("instances.request", lab.request(), token=lab.member)
    assert refused["state"] == "rejected"
    assert refused["reason_code"] == "no_capacity"
    assert refused["host"] is None
    assert await claim_count(db, refused["id"]) == 0
    assert (await host_claims(db, only))["claimed_vcpus"] == 2, "only the first instance's claim"
    after = await state_of(inventory, lab, fine["id"])
    assert after["state"] == "scheduled", "instances already there are left alone"
    assert after["version"] == fine["version"]
