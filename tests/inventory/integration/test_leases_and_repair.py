"""Leases run out on time (warned, stopped, then deleted after the grace period) and can be
moved or dropped; a project's default lease applies to new requests. A claim repair makes
claims and host counters agree with the instances again, and only admins may run one."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta

import asyncpg
import pytest

from compgrid_events.base import utc_now
from compgrid_events.inventory import (
    InstanceDeleteRequested,
    InstanceScheduled,
    InstanceStopRequested,
    LeaseExpiring,
)
from compgrid_events.provisioner import InstanceDeleted, InstanceFailed
from tests.harness.streams import StreamWatch
from tests.inventory.integration.conftest import (
    LEASE_GRACE_S,
    LEASE_WARN_S,
    Commands,
    InventoryHarness,
    Lab,
    report,
    running_instance,
    state_of,
    stopped,
    wait_state,
)

pytestmark = [pytest.mark.postgres, pytest.mark.nats]


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value)


# Leases -----------------------------------------------------------------------------------


async def test_a_lease_warns_then_stops_then_deletes_after_the_grace_period(
    inventory: InventoryHarness, lab: Lab, commands: Commands
) -> None:
    async with StreamWatch.of(inventory.nc, LeaseExpiring) as warnings:
        end = utc_now() + timedelta(seconds=LEASE_WARN_S + 2)
        running, scheduled = await running_instance(
            inventory, lab, commands, lease_ends_at=end.isoformat()
        )
        iid = running["id"]
        assert parse((await state_of(inventory, lab, iid))["lease_ends_at"]) == end

        warning = await warnings.wait_for(LeaseExpiring, iid)
        warned_at = warnings.received_at(warning)
        assert warned_at < end, "the owner hears of it before the end"
        assert warned_at >= end - timedelta(seconds=LEASE_WARN_S), "not before the warning time"
        assert warning.lease_ends_at == end
        assert warning.deleted_after == end + timedelta(seconds=LEASE_GRACE_S)
        assert str(warning.owner) == lab.member_id
        assert str(warning.project_id) == lab.project_id
        assert (await state_of(inventory, lab, iid))["state"] == "running"

        stop = await commands.wait_for(InstanceStopRequested, iid)
        assert utc_now() >= end
        assert stop.host == scheduled.host
        assert "lease" in stop.reason
        await wait_state(inventory, lab, iid, "stopping")
        assert len(await warnings.matching(LeaseExpiring, iid)) == 1, "one warning per lease end"

    await inventory.publish(stopped(scheduled))
    await wait_state(inventory, lab, iid, "stopped")
    delete = await commands.wait_for(InstanceDeleteRequested, iid)
    assert utc_now() >= end + timedelta(seconds=LEASE_GRACE_S)
    assert delete.host == scheduled.host
    await wait_state(inventory, lab, iid, "deleting")
    await inventory.publish(report(InstanceDeleted, scheduled))
    await wait_state(inventory, lab, iid, "deleted")


async def test_a_moved_lease_is_warned_and_ended_at_its_new_end_only(
    inventory: InventoryHarness, lab: Lab, commands: Commands
) -> None:
    async with StreamWatch.of(inventory.nc, LeaseExpiring) as warnings:
        first_end = utc_now() + timedelta(seconds=LEASE_WARN_S + 1)
        running, _ = await running_instance(
            inventory, lab, commands, lease_ends_at=first_end.isoformat()
        )
        iid = running["id"]
        first = await warnings.wait_for(LeaseExpiring, iid)
        assert first.lease_ends_at == first_end

        later = utc_now() + timedelta(hours=1)
        moved = await inventory.call(
            "instances.set_lease",
            {"instance_id": iid, "lease_ends_at": later.isoformat()},
            token=lab.member,
        )
        assert parse(moved["lease_ends_at"]) == later
        wait = (first_end - utc_now()).total_seconds() + 1.0
        await asyncio.sleep(max(wait, 0))
        now = await state_of(inventory, lab, iid)
        assert now["state"] == "running", "the old end no longer applies"
        assert await commands.matching(InstanceStopRequested, iid) == []
        assert len(await warnings.matching(LeaseExpiring, iid)) == 1, (
            "no warning: the new end is an hour away"
        )

        soon = utc_now() + timedelta(seconds=1.5)
        await inventory.call(
            "instances.set_lease",
            {"instance_id": iid, "lease_ends_at": soon.isoformat()},
            token=lab.member,
        )
        second = await warnings.wait_for(LeaseExpiring, iid, count=2)
        assert second.lease_ends_at == soon, "warned again, for the new end"
        await commands.wait_for(InstanceStopRequested, iid)
        assert utc_now() >= soon
        assert len(await commands.matching(InstanceStopRequested, iid)) == 1
        await wait_state(inventory, lab, iid, "stopping")


async def test_set_lease_moves_to_the_future_only_and_null_drops_it(
    inventory: InventoryHarness, lab: Lab, commands: Commands
) -> None:
    running, _ = await running_instance(inventory, lab, commands)
    iid = running["id"]
    assert (await state_of(inventory, lab, iid))["lease_ends_at"] is None

    end = utc_now() + timedelta(hours=5)
    moved = await inventory.call(
        "instances.set_lease", {"instance_id": iid, "lease_ends_at": end.isoformat()}, token=lab.pi
    )
    assert parse(moved["lease_ends_at"]) == end

    past = utc_now() - timedelta(minutes=1)
    error = await inventory.refused(
        "instances.set_lease", {"instance_id": iid, "lease_ends_at": past.isoformat()}, token=lab.pi
    )
    assert error.status == 422
    assert error.field == "lease_ends_at"
    stranger = await inventory.refused(
        "instances.set_lease",
        {"instance_id": iid, "lease_ends_at": (end + timedelta(hours=1)).isoformat()},
        token=lab.outsider,
    )
    assert stranger.status == 404
    assert parse((await state_of(inventory, lab, iid))["lease_ends_at"]) == end

    dropped = await inventory.call(
        "instances.set_lease", {"instance_id": iid, "lease_ends_at": None}, token=lab.member
    )
    assert dropped["lease_ends_at"] is None
    now = await state_of(inventory, lab, iid)
    assert now["lease_ends_at"] is None
    assert now["state"] == "running"


async def test_a_project_default_lease_applies_to_new_requests(
    inventory: InventoryHarness, lab: Lab
) -> None:
    body = {"project_id": lab.project_id, "default_lease_hours": 2}
    refused = await inventory.refused("projects.set_policy", body, token=lab.member)
    assert refused.status == 403
    policy = await inventory.call("projects.set_policy", body, token=lab.pi)
    assert policy["default_lease_hours"] == 2
    got = await inventory.call("projects.get", {"project_id": lab.project_id}, token=lab.member)
    assert got["default_lease_hours"] == 2

    before = utc_now()
    leased = await inventory.call("instances.request", lab.request(), token=lab.member)
    after = utc_now()
    end = parse(leased["lease_ends_at"])
    assert before + timedelta(hours=2) - timedelta(seconds=5) <= end
    assert end <= after + timedelta(hours=2) + timedelta(seconds=5)

    own = utc_now() + timedelta(minutes=30)
    chosen = await inventory.call(
        "instances.request", lab.request(lease_ends_at=own.isoformat()), token=lab.member
    )
    assert parse(chosen["lease_ends_at"]) == own, "an explicit end wins over the default"

    past = await inventory.refused(
        "instances.request",
        lab.request("too-late", lease_ends_at=(utc_now() - timedelta(seconds=5)).isoformat()),
        token=lab.member,
    )
    assert past.status == 422
    assert past.field == "lease_ends_at"
    listed = await inventory.call(
        "instances.list", {"project_id": lab.project_id, "name": "too-late"}, token=lab.member
    )
    assert listed["items"] == []

    await inventory.call(
        "projects.set_policy",
        {"project_id": lab.project_id, "default_lease_hours": None},
        token=lab.pi,
    )
    unleased = await inventory.call("instances.request", lab.request(), token=lab.member)
    assert unleased["lease_ends_at"] is None


# Claim repair -----------------------------------------------------------------------------

REPAIR_ZERO = {"orphan_claims_released": 0, "missing_claims_restored": 0, "hosts_recounted": 0}


async def counters(db: asyncpg.Connection, host_id: str) -> tuple[int, int, int]:
    row = await db.fetchrow(
        "SELECT claimed_vcpus, claimed_memory_mib, claimed_disk_gib FROM inventory.host"
        " WHERE id = $1",
        uuid.UUID(host_id),
    )
    return (row["claimed_vcpus"], row["claimed_memory_mib"], row["claimed_disk_gib"])


async def claim_sums(db: asyncpg.Connection, host_id: str) -> tuple[int, int, int]:
    row = await db.fetchrow(
        "SELECT coalesce(sum(vcpus), 0) AS v, coalesce(sum(memory_mib), 0) AS m,"
        " coalesce(sum(disk_gib), 0) AS d FROM inventory.claim WHERE host_id = $1",
        uuid.UUID(host_id),
    )
    return (int(row["v"]), int(row["m"]), int(row["d"]))


async def test_claim_repair_is_for_admins_only(inventory: InventoryHarness, lab: Lab) -> None:
    for token in (lab.pi, lab.member, lab.finance, lab.outsider):
        error = await inventory.refused("claims.repair", {}, token=token)
        assert error.status == 403
    unsigned = await inventory.refused("claims.repair", {}, token="")
    assert unsigned.status == 401


async def test_claim_repair_restores_exactly_the_right_counters(
    inventory: InventoryHarness, lab: Lab, commands: Commands, db: asyncpg.Connection
) -> None:
    placed: dict[str, str] = {}
    for kind in ("small", "small", "big"):
        created = await inventory.call(
            "instances.request",
            lab.request(instance_type=getattr(lab, kind)),
            token=lab.member,
        )
        scheduled = await commands.wait_for(InstanceScheduled, created["id"])
        placed[created["id"]] = scheduled.host
    first, second, big = list(placed)
    assert placed[first] == placed[second] == "h0", "pack puts both small ones on h0"
    assert placed[big] == "h1"
    h0, h1, gpu0 = lab.hosts["h0"], lab.hosts["h1"], lab.hosts["gpu0"]
    expected = {h0: (4, 4096, 20), h1: (8, 8192, 10), gpu0: (0, 0, 0)}
    for host_id, wanted in expected.items():
        assert await counters(db, host_id) == wanted

    # Whatever other tests of this run left behind is repaired first, so the counts below
    # are this test's alone.
    await inventory.call("claims.repair", {}, token=lab.admin)

    # 1. A live instance lost its claim row (the host's counters still include it).
    await db.execute("DELETE FROM inventory.claim WHERE id = $1", uuid.UUID(first))
    # 2. A claim for no instance at all, counted on the GPU host.
    orphan = uuid.uuid4()
    await db.execute(
        "INSERT INTO inventory.claim (id, host_id, vcpus, memory_mib, disk_gib, gpus)"
        " VALUES ($1, $2, 4, 4096, 20, '{}'::jsonb)",
        orphan,
        uuid.UUID(gpu0),
    )
    await db.execute(
        "UPDATE inventory.host SET claimed_vcpus = claimed_vcpus + 4,"
        " claimed_memory_mib = claimed_memory_mib + 4096,"
        " claimed_disk_gib = claimed_disk_gib + 20 WHERE id = $1",
        uuid.UUID(gpu0),
    )
    # 3. A host whose counter is simply wrong.
    await db.execute("UPDATE inventory.host SET claimed_vcpus = 3 WHERE id = $1", uuid.UUID(h1))
    assert await counters(db, h1) == (3, 8192, 10)
    assert await counters(db, gpu0) == (4, 4096, 20)

    fixed = await inventory.call("claims.repair", {}, token=lab.admin)
    assert fixed == {
        "orphan_claims_released": 1,
        "missing_claims_restored": 1,
        "hosts_recounted": 2,  # h1's wrong counter, and gpu0's that counted the orphan
    }

    for host_id, wanted in expected.items():
        assert await counters(db, host_id) == wanted
        assert await claim_sums(db, host_id) == wanted
    restored = await db.fetchrow("SELECT * FROM inventory.claim WHERE id = $1", uuid.UUID(first))
    assert restored is not None
    assert restored["host_id"] == uuid.UUID(h0)
    assert (restored["vcpus"], restored["memory_mib"], restored["disk_gib"]) == (2, 2048, 10)
    assert await db.fetchval("SELECT count(*) FROM inventory.claim WHERE id = $1", orphan) == 0
    host = await inventory.call("hosts.get", {"host_id": h1}, token=lab.admin)
    assert host["claimed_vcpus"] == 8

    again = await inventory.call("claims.repair", {}, token=lab.admin)
    assert again == REPAIR_ZERO
    for host_id, wanted in expected.items():
        assert await counters(db, host_id) == wanted


async def test_claim_repair_drops_an_orphan_claim_its_host_never_counted(
    inventory: InventoryHarness, lab: Lab, db: asyncpg.Connection
) -> None:
    """A claim row for no instance whose amount the host's counters never included (h1 is
    empty, its counters are 0): the repair must drop it and leave h1 at 0, not fail."""
    await inventory.call("claims.repair", {}, token=lab.admin)
    h1 = lab.hosts["h1"]
    orphan = uuid.uuid4()
    await db.execute(
        "INSERT INTO inventory.claim (id, host_id, vcpus, memory_mib, disk_gib, gpus)"
        " VALUES ($1, $2, 2, 2048, 10, '{}'::jsonb)",
        orphan,
        uuid.UUID(h1),
    )
    try:
        fixed = await inventory.call("claims.repair", {}, token=lab.admin)
        assert fixed["orphan_claims_released"] == 1
        assert fixed["missing_claims_restored"] == 0
        assert await db.fetchval("SELECT count(*) FROM inventory.claim WHERE id = $1", orphan) == 0
        assert await counters(db, h1) == (0, 0, 0)
        assert await inventory.call("claims.repair", {}, token=lab.admin) == REPAIR_ZERO
    finally:
        # Never leave a claim that breaks every later repair of this run.
        await db.execute("DELETE FROM inventory.claim WHERE id = $1", orphan)


async def test_a_repair_after_a_gpu_instance_came_and_went_finds_nothing_to_fix(
    inventory: InventoryHarness, lab: Lab, commands: Commands, db: asyncpg.Connection
) -> None:
    await inventory.call("claims.repair", {}, token=lab.admin)
    gpu0 = lab.hosts["gpu0"]
    created = await inventory.call(
        "instances.request", lab.request(instance_type=lab.gpu), token=lab.member
    )
    scheduled = await commands.wait_for(InstanceScheduled, created["id"])
    assert scheduled.host == "gpu0"
    claimed = await inventory.call("hosts.get", {"host_id": gpu0}, token=lab.admin)
    assert claimed["claimed_gpus"] == {"a100": 1}
    await inventory.publish(report(InstanceFailed, scheduled, reason="no IOMMU group for the GPU"))
    await wait_state(inventory, lab, created["id"], "failed")
    freed = await inventory.call("hosts.get", {"host_id": gpu0}, token=lab.admin)
    assert freed["claimed_vcpus"] == 0
    assert {m: n for m, n in freed["claimed_gpus"].items() if n} == {}, "the GPU is free again"

    # Claims and counters agree: there is nothing to repair, and the host is not rewritten.
    assert await inventory.call("claims.repair", {}, token=lab.admin) == REPAIR_ZERO
    after = await inventory.call("hosts.get", {"host_id": gpu0}, token=lab.admin)
    assert after["version"] == freed["version"]
