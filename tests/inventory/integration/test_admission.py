"""Admission end to end: project quotas, budget codes as billing reports them (holds, states,
exhaustion), concurrent requests against an almost spent code, PI approvals, bad input that
must change nothing, and requests by requirements that pick the cheapest type that fits now.

Every outcome is read back from the service (state, reason, version), from its events on
JetStream and from its tables (instances, claims, holds, budget projection).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from nats.js.api import DeliverPolicy

from compgrid_events import Event
from compgrid_events.auth import HardLimitBehaviour
from compgrid_events.base import Money, utc_now
from compgrid_events.billing import BudgetExhausted, BudgetState, BudgetStatusChanged
from compgrid_events.inventory import (
    ApprovalDecided,
    ApprovalRequested,
    InstanceRejected,
    InstanceScheduled,
    InstanceState,
    InstanceStateChanged,
    InstanceStopRequested,
)
from compgrid_events.provisioner import InstanceDeleted, InstanceFailed, InstanceStopped
from compgrid_runtime.app import ServiceApp
from compgrid_runtime.errors import DomainError
from tests.harness.streams import StreamWatch
from tests.inventory.integration.conftest import (
    Commands,
    InventoryHarness,
    Lab,
    applied,
    budget_code,
    claim_count,
    extra_processes,
    make_lab,
    report,
    running_instance,
    state_of,
    stopped,
    tag,
    wait_state,
)

pytestmark = [pytest.mark.postgres, pytest.mark.nats]

# Prices of the lab's types under its tier (0.10/vCPU-h, 0.01/GiB-h, 0.073/GiB-month of disk).
SMALL_HOURLY = Decimal("0.221")  # 2 vCPU, 2 GiB, 10 GiB
BIG_HOURLY = Decimal("0.881")  # 8 vCPU, 8 GiB, 10 GiB
GPU_HOURLY = Decimal("2.481")  # 4 vCPU, 8 GiB, 10 GiB, 1 a100
SMALL_HOLD = SMALL_HOURLY * 24  # the default admission horizon is 24 h: 5.304 EUR


def eur(amount: str | Decimal) -> Money:
    return Money(amount=Decimal(amount), currency="EUR")


# Looking behind the service ------------------------------------------------------------------


async def lab_claimed(db: asyncpg.Connection, lab: Lab) -> tuple[int, int, int, int]:
    """Claimed vCPU, memory, GPUs (all models) on the lab's hosts, and their claim rows."""
    host_ids = [uuid.UUID(h) for h in lab.hosts.values()]
    rows = await db.fetch(
        "SELECT claimed_vcpus, claimed_memory_mib, claimed_gpus::text AS gpus"
        " FROM inventory.host WHERE id = ANY($1::uuid[])",
        host_ids,
    )
    claims = await db.fetchval(
        "SELECT count(*) FROM inventory.claim WHERE host_id = ANY($1::uuid[])", host_ids
    )
    return (
        sum(int(r["claimed_vcpus"]) for r in rows),
        sum(int(r["claimed_memory_mib"]) for r in rows),
        sum(sum(int(n) for n in json.loads(r["gpus"]).values()) for r in rows),
        int(claims),
    )


async def instance_count(db: asyncpg.Connection, project_id: str) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM inventory.instance WHERE project_id = $1",
            uuid.UUID(project_id),
        )
    )


async def holds_of(db: asyncpg.Connection, budget_code_id: str) -> dict[str, Decimal]:
    """The admission holds on a budget code that billing has not confirmed, by instance."""
    rows = await db.fetch(
        "SELECT instance_id, amount FROM inventory.hold WHERE budget_code_id = $1",
        uuid.UUID(budget_code_id),
    )
    return {str(r["instance_id"]): Decimal(r["amount"]) for r in rows}


async def budget_row(db: asyncpg.Connection, budget_code_id: str) -> asyncpg.Record:
    row = await db.fetchrow(
        "SELECT billing_state, available, billing_version FROM inventory.budget WHERE id = $1",
        uuid.UUID(budget_code_id),
    )
    assert row is not None
    return row


async def publish_applied(
    inventory: InventoryHarness, db: asyncpg.Connection, event: Event
) -> None:
    """Publish an event as its owner would and wait until the inventory has applied it."""
    await inventory.publish(event)
    await applied(db, event)


async def budget_status(
    inventory: InventoryHarness,
    db: asyncpg.Connection,
    lab: Lab,
    *,
    version: int,
    available: str | Decimal,
    state: BudgetState = BudgetState.OPEN,
    held: tuple[str, ...] = (),
    budget_code_id: str | None = None,
) -> BudgetStatusChanged:
    """Publish billing's view of a budget code and wait until it is applied."""
    event = BudgetStatusChanged(
        budget_code_id=uuid.UUID(budget_code_id or lab.budget_code_id),
        project_id=uuid.UUID(lab.project_id),
        state=state,
        funding=eur("10000"),
        available=eur(available),
        version=version,
        held_instance_ids=tuple(uuid.UUID(i) for i in held),
    )
    await publish_applied(inventory, db, event)
    return event


async def exhausted(
    inventory: InventoryHarness, db: asyncpg.Connection, lab: Lab, behaviour: HardLimitBehaviour
) -> None:
    """Billing's news that the lab's budget code is spent, applied."""
    await publish_applied(
        inventory,
        db,
        BudgetExhausted(
            budget_code_id=uuid.UUID(lab.budget_code_id),
            project_id=uuid.UUID(lab.project_id),
            behaviour=behaviour,
            spent=eur("10000"),
            funding=eur("10000"),
        ),
    )


@contextlib.asynccontextmanager
async def holds_frozen(db: asyncpg.Connection, seconds: float = 1.0) -> AsyncIterator[None]:
    """Hold back every write to ``inventory.hold`` (reads go on) while the block runs and for
    ``seconds`` more, so admissions in flight all get as far as writing their hold at once."""
    async with db.transaction():
        await db.execute("LOCK TABLE inventory.hold IN SHARE MODE")
        yield
        await asyncio.sleep(seconds)


async def second_code(inventory: InventoryHarness, db: asyncpg.Connection, lab: Lab) -> str:
    """Another budget code of the lab's project (through auth), once the inventory knows it."""
    return await budget_code(
        inventory, db, lab.project_id, code=f"B-{tag()}", name="second grant", funding="5000"
    )


# 1. Quotas ------------------------------------------------------------------------------------


async def test_only_admins_set_quotas(inventory: InventoryHarness, lab: Lab) -> None:
    body = {"project_id": lab.project_id, "max_instances": 1}
    for token in (lab.pi, lab.member, lab.finance):
        error = await inventory.refused("projects.set_quota", body, token=token)
        assert error.status == 403, error.code
    policy = await inventory.call("projects.get", {"project_id": lab.project_id}, token=lab.pi)
    assert policy["quota"]["max_instances"] is None, "a refused quota change changed nothing"

    negative = await inventory.refused(
        "projects.set_quota", {"project_id": lab.project_id, "max_vcpus": -1}, token=lab.admin
    )
    assert (negative.status, negative.field) == (422, "max_vcpus")

    policy = await inventory.call("projects.set_quota", body, token=lab.admin)
    assert policy["quota"]["max_instances"] == 1
    assert policy["effective_quota"]["max_instances"] == 1


async def test_instance_quota_rejects_without_a_claim_and_ending_instances_free_it(
    inventory: InventoryHarness, lab: Lab, commands: Commands, db: asyncpg.Connection
) -> None:
    await inventory.call(
        "projects.set_quota", {"project_id": lab.project_id, "max_instances": 2}, token=lab.admin
    )
    first = await inventory.call("instances.request", lab.request(), token=lab.member)
    second = await inventory.call("instances.request", lab.request(), token=lab.member)
    assert (first["state"], second["state"]) == ("scheduled", "scheduled")
    before = await lab_claimed(db, lab)
    assert before == (4, 4096, 0, 2)

    async with StreamWatch.of(
        inventory.nc, InstanceRejected, deliver=DeliverPolicy.ALL
    ) as rejections:
        over = await inventory.call("instances.request", lab.request(), token=lab.member)
        assert over["state"] == "rejected"
        assert over["reason_code"] == "quota_exceeded"
        assert "quota" in over["reason"], over["reason"]
        assert "instances" in over["reason"], over["reason"]
        assert "2" in over["reason"]
        assert over["host"] is None
        assert await claim_count(db, over["id"]) == 0
        assert await lab_claimed(db, lab) == before, "nothing is claimed for a rejected request"
        assert over["id"] not in await holds_of(db, lab.budget_code_id)
        (event,) = await rejections.wait_settled(InstanceRejected, over["id"], settle_s=0.2)
        assert event.reason_code == "quota_exceeded"
        assert event.version == over["version"]
    policy = await inventory.call("projects.get", {"project_id": lab.project_id}, token=lab.pi)
    assert policy["used"]["max_instances"] == 2

    # A failed instance gives its place in the quota back.
    scheduled = await commands.wait_for(InstanceScheduled, first["id"])
    await inventory.publish(report(InstanceFailed, scheduled, reason="disk image unreadable"))
    await wait_state(inventory, lab, first["id"], "failed")
    third = await inventory.call("instances.request", lab.request(), token=lab.member)
    assert third["state"] == "scheduled", third

    # Deleting holds the place until the domain is gone; then it is free again.
    deleting = await inventory.call(
        "instances.delete", {"instance_id": second["id"]}, token=lab.member
    )
    assert deleting["state"] == "deleting"
    still_over = await inventory.call("instances.request", lab.request(), token=lab.member)
    assert (still_over["state"], still_over["reason_code"]) == ("rejected", "quota_exceeded")
    gone = await commands.wait_for(InstanceScheduled, second["id"])
    await inventory.publish(report(InstanceDeleted, gone))
    await wait_state(inventory, lab, second["id"], "deleted")
    fourth = await inventory.call("instances.request", lab.request(), token=lab.member)
    assert fourth["state"] == "scheduled", fourth
    assert await lab_claimed(db, lab) == (4, 4096, 0, 2)


async def test_vcpu_memory_and_gpu_quotas_name_the_quota_exceeded(
    inventory: InventoryHarness, lab: Lab, db: asyncpg.Connection
) -> None:
    async def quota(**limits: int) -> None:
        await inventory.call(
            "projects.set_quota", {"project_id": lab.project_id, **limits}, token=lab.admin
        )

    small = await inventory.call("instances.request", lab.request(), token=lab.member)
    assert small["state"] == "scheduled"
    before = await lab_claimed(db, lab)

    cases = [
        ({"max_vcpus": 9}, lab.big, "vCPU", "10"),  # 2 + 8 > 9
        ({"max_memory_mib": 8192}, lab.big, "memory", "10240"),  # 2048 + 8192 > 8192
        ({"max_gpus": 0}, lab.gpu, "GPU", "0"),
    ]
    for limits, kind, named, number in cases:
        await quota(**limits)
        refused = await inventory.call(
            "instances.request", lab.request(instance_type=kind), token=lab.member
        )
        assert refused["state"] == "rejected", (limits, refused)
        assert refused["reason_code"] == "quota_exceeded", (limits, refused)
        assert "quota" in refused["reason"], refused["reason"]
        assert named in refused["reason"], refused["reason"]
        assert number in refused["reason"], refused["reason"]
        assert await claim_count(db, refused["id"]) == 0
        assert await lab_claimed(db, lab) == before, limits

    # Within every limit the same kind of request goes through.
    await quota(max_vcpus=10, max_memory_mib=10240, max_gpus=1)
    fits = await inventory.call(
        "instances.request", lab.request(instance_type=lab.big), token=lab.member
    )
    assert fits["state"] == "scheduled", fits
    gpu = await inventory.call(
        "instances.request", lab.request(instance_type=lab.gpu), token=lab.member
    )
    assert gpu["reason_code"] == "quota_exceeded", gpu
    assert "vCPU" in gpu["reason"], gpu
    await quota(max_vcpus=14, max_memory_mib=18432, max_gpus=1)
    gpu = await inventory.call(
        "instances.request", lab.request(instance_type=lab.gpu), token=lab.member
    )
    assert gpu["state"] == "scheduled", gpu
    assert await lab_claimed(db, lab) == (14, 18432, 1, 3)


# 2. Budgets -----------------------------------------------------------------------------------


async def test_budget_limit_holds_and_states_as_billing_reports_them(
    inventory: InventoryHarness, db: asyncpg.Connection
) -> None:
    lab = await make_lab(inventory, db, funding="1")

    # Before billing says anything, no limit is known: even more than the funding is admitted.
    free = await inventory.call("instances.request", lab.request(), token=lab.member)
    assert free["state"] == "scheduled", free
    assert await holds_of(db, lab.budget_code_id) == {free["id"]: SMALL_HOLD}

    # Billing: 5 EUR left, counting the first hold already.
    await budget_status(inventory, db, lab, version=1, available="5.00", held=(free["id"],))
    assert await holds_of(db, lab.budget_code_id) == {}
    row = await budget_row(db, lab.budget_code_id)
    assert (row["billing_state"], row["available"], row["billing_version"]) == ("open", 5, 1)

    short = await inventory.call("instances.request", lab.request(), token=lab.member)
    assert short["state"] == "rejected"
    assert short["reason_code"] == "budget_insufficient"
    assert "5.30" in short["reason"], short["reason"]
    assert "5.00" in short["reason"], short["reason"]
    assert await claim_count(db, short["id"]) == 0
    assert await holds_of(db, lab.budget_code_id) == {}

    # A lease that ends in 12 h needs only 12 h of price.
    leased = await inventory.call(
        "instances.request",
        lab.request(lease_ends_at=(utc_now() + timedelta(hours=12)).isoformat()),
        token=lab.member,
    )
    assert leased["state"] == "scheduled", leased
    held = await holds_of(db, lab.budget_code_id)
    assert Decimal("2.651") < held[leased["id"]] <= SMALL_HOURLY * 12
    # A lease beyond the horizon is held for the horizon only: 5.304 > 5.00 - 2.652.
    far = await inventory.call(
        "instances.request",
        lab.request(lease_ends_at=(utc_now() + timedelta(hours=48)).isoformat()),
        token=lab.member,
    )
    assert (far["state"], far["reason_code"]) == ("rejected", "budget_insufficient")
    assert "5.30" in far["reason"], far["reason"]

    # Billing's states refuse with their own reasons, whatever is left.
    for version, state, code in (
        (2, BudgetState.EXHAUSTED, "budget_exhausted"),
        (3, BudgetState.BLOCKED, "budget_blocked"),
        (4, BudgetState.EXPIRED, "budget_expired"),
    ):
        await budget_status(inventory, db, lab, version=version, available="9000", state=state)
        refused = await inventory.call("instances.request", lab.request(), token=lab.member)
        assert (refused["state"], refused["reason_code"]) == ("rejected", code), refused
        assert await claim_count(db, refused["id"]) == 0

    # An older status arriving late does not overwrite the newer one.
    await budget_status(inventory, db, lab, version=3, available="9000", state=BudgetState.OPEN)
    row = await budget_row(db, lab.budget_code_id)
    assert (row["billing_state"], row["billing_version"]) == ("expired", 4)
    still = await inventory.call("instances.request", lab.request(), token=lab.member)
    assert (still["state"], still["reason_code"]) == ("rejected", "budget_expired")

    await budget_status(inventory, db, lab, version=5, available="9000")
    reopened = await inventory.call("instances.request", lab.request(), token=lab.member)
    assert reopened["state"] == "scheduled", reopened


async def test_a_budget_code_past_its_valid_to_rejects_as_expired(
    inventory: InventoryHarness, db: asyncpg.Connection
) -> None:
    lab = await make_lab(inventory, db, valid_to=date.today() - timedelta(days=1))
    refused = await inventory.call("instances.request", lab.request(), token=lab.member)
    assert refused["state"] == "rejected"
    assert refused["reason_code"] == "budget_expired"
    assert str(date.today() - timedelta(days=1)) in refused["reason"], refused["reason"]
    assert await claim_count(db, refused["id"]) == 0
    assert await lab_claimed(db, lab) == (0, 0, 0, 0)
    assert await holds_of(db, lab.budget_code_id) == {}


async def test_exhaustion_that_stops_instances_stops_only_the_codes_instances(
    inventory: InventoryHarness, lab: Lab, commands: Commands, db: asyncpg.Connection
) -> None:
    other_code = await second_code(inventory, db, lab)
    doomed, _ = await running_instance(inventory, lab, commands)
    spared, _ = await running_instance(inventory, lab, commands, budget_code_id=other_code)

    await exhausted(inventory, db, lab, HardLimitBehaviour.STOP_INSTANCES)
    stop = await commands.wait_for(InstanceStopRequested, doomed["id"])
    stopping = await state_of(inventory, lab, doomed["id"])
    assert stopping["state"] == "stopping"
    assert stopping["version"] == doomed["version"] + 1
    assert stop.version == stopping["version"]
    assert "exhausted" in stop.reason

    assert not await commands.matching(InstanceStopRequested, spared["id"]), (
        "an instance on another budget code is not stopped"
    )
    assert (await state_of(inventory, lab, spared["id"]))["state"] == "running"

    refused = await inventory.call("instances.request", lab.request(), token=lab.member)
    assert (refused["state"], refused["reason_code"]) == ("rejected", "budget_exhausted")
    other = await inventory.call(
        "instances.request", lab.request(budget_code_id=other_code), token=lab.member
    )
    assert other["state"] == "scheduled", other


async def test_an_instance_stopped_because_its_grant_ran_out_says_so(
    inventory: InventoryHarness, lab: Lab, commands: Commands, db: asyncpg.Connection
) -> None:
    running, scheduled = await running_instance(inventory, lab, commands)
    assert (running["reason_code"], running["reason"]) == (None, None)

    async with StreamWatch.of(inventory.nc, InstanceStateChanged) as changes:
        await exhausted(inventory, db, lab, HardLimitBehaviour.STOP_INSTANCES)
        stopping = await wait_state(inventory, lab, running["id"], "stopping")
        assert stopping["reason_code"] == "budget_exhausted"
        code = await db.fetchval(
            "SELECT code FROM inventory.budget WHERE id = $1", uuid.UUID(lab.budget_code_id)
        )
        assert f"budget code {code} is exhausted" in stopping["reason"], stopping["reason"]

        await inventory.publish(stopped(scheduled))
        halted = await wait_state(inventory, lab, running["id"], "stopped")
        assert (halted["reason_code"], halted["reason"]) == ("budget_exhausted", stopping["reason"])
        said = await changes.wait_settled(InstanceStateChanged, running["id"], count=2)
    assert [(e.state, e.reason_code, e.reason) for e in said] == [
        (InstanceState.STOPPING, "budget_exhausted", stopping["reason"]),
        (InstanceState.STOPPED, "budget_exhausted", stopping["reason"]),
    ]

    # Started again (funds raised): the old reason no longer applies.
    await budget_status(inventory, db, lab, version=50, available="10000")
    await inventory.call("instances.start", {"instance_id": running["id"]}, token=lab.member)
    started_again = await state_of(inventory, lab, running["id"])
    assert started_again["state"] == "starting"
    assert (started_again["reason_code"], started_again["reason"]) == (None, None)


async def test_exhaustion_that_blocks_new_keeps_running_instances_running(
    inventory: InventoryHarness, lab: Lab, commands: Commands, db: asyncpg.Connection
) -> None:
    running, _ = await running_instance(inventory, lab, commands)
    await exhausted(inventory, db, lab, HardLimitBehaviour.BLOCK_NEW)
    refused = await inventory.call("instances.request", lab.request(), token=lab.member)
    assert (refused["state"], refused["reason_code"]) == ("rejected", "budget_exhausted")
    assert await claim_count(db, refused["id"]) == 0

    await asyncio.sleep(0.3)
    assert not await commands.matching(InstanceStopRequested, running["id"])
    after = await state_of(inventory, lab, running["id"])
    assert (after["state"], after["version"]) == ("running", running["version"])


# 3. Concurrent requests against an almost spent budget code -----------------------------------


@pytest.fixture
async def rpc_processes(inventory: InventoryHarness) -> AsyncIterator[list[ServiceApp]]:
    """Two more inventory processes answering requests, so requests really run at once."""
    async with extra_processes(inventory, 2) as apps:
        yield apps


async def test_concurrent_requests_never_hold_more_than_a_code_has_left(
    inventory: InventoryHarness,
    lab: Lab,
    db: asyncpg.Connection,
    rpc_processes: list[ServiceApp],
) -> None:
    admitted_n = 3
    available = SMALL_HOLD * admitted_n
    await budget_status(inventory, db, lab, version=1, available=available)

    async with holds_frozen(db):
        calls = asyncio.gather(
            *(
                inventory.call("instances.request", lab.request(f"race-{i}"), token=lab.member)
                for i in range(3 * admitted_n)
            ),
            return_exceptions=True,
        )
    results = await calls
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == [], errors[:1]
    answers = [r for r in results if isinstance(r, dict)]
    assert Counter(a["state"] for a in answers) == {
        "scheduled": admitted_n,
        "rejected": 2 * admitted_n,
    }
    assert {a["reason_code"] for a in answers if a["state"] == "rejected"} == {
        "budget_insufficient"
    }
    admitted = sorted(a["id"] for a in answers if a["state"] == "scheduled")
    held = await holds_of(db, lab.budget_code_id)
    assert sorted(held) == admitted
    assert sum(held.values()) <= available
    assert all(amount == SMALL_HOLD for amount in held.values())
    claimed = await lab_claimed(db, lab)
    assert (claimed[0], claimed[3]) == (2 * admitted_n, admitted_n)

    # Billing now counts two of the holds itself: they are dropped here, the third stays.
    confirmed = tuple(admitted[:2])
    await budget_status(
        inventory, db, lab, version=2, available=available - 2 * SMALL_HOLD, held=confirmed
    )
    assert await holds_of(db, lab.budget_code_id) == {admitted[2]: SMALL_HOLD}
    # What is left (one hold's worth) is still taken by the unconfirmed third hold.
    late = await inventory.call("instances.request", lab.request(), token=lab.member)
    assert (late["state"], late["reason_code"]) == ("rejected", "budget_insufficient")


async def test_concurrent_restarts_never_hold_more_than_a_code_has_left(
    inventory: InventoryHarness,
    lab: Lab,
    commands: Commands,
    db: asyncpg.Connection,
    rpc_processes: list[ServiceApp],
) -> None:
    """Starting a stopped instance is admitted against the budget too (it places a new hold),
    so concurrent starts must not overspend a code any more than concurrent requests may."""
    stopped = []
    for _ in range(6):
        running, _ = await running_instance(inventory, lab, commands)
        await inventory.call("instances.stop", {"instance_id": running["id"]}, token=lab.member)
        command = await commands.wait_for(InstanceStopRequested, running["id"])
        await inventory.publish(report(InstanceStopped, command, stopped_at=utc_now()))
        stopped.append(running["id"])
    for iid in stopped:
        await wait_state(inventory, lab, iid, "stopped")
    assert await holds_of(db, lab.budget_code_id) == {}, "stopped instances hold nothing"

    available = SMALL_HOLD * 2
    await budget_status(inventory, db, lab, version=1, available=available)
    async with holds_frozen(db):
        calls = asyncio.gather(
            *(
                inventory.call("instances.start", {"instance_id": iid}, token=lab.member)
                for iid in stopped
            ),
            return_exceptions=True,
        )
    results = await calls
    started_ok = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, DomainError)]
    assert len(started_ok) + len(refused) == len(stopped), results
    assert {(e.status, e.code) for e in refused} <= {(409, "budget_insufficient")}, refused
    held = await holds_of(db, lab.budget_code_id)
    assert sum(held.values()) <= available, (
        f"{len(started_ok)} concurrent starts were admitted and hold {sum(held.values())}"
        f" EUR on a code with {available} EUR left"
    )
    assert len(started_ok) == 2


# 4. Approvals ---------------------------------------------------------------------------------


async def pi_user_id(db: asyncpg.Connection, lab: Lab) -> uuid.UUID:
    found = await db.fetchval(
        "SELECT pi_user_id FROM inventory.project WHERE id = $1", uuid.UUID(lab.project_id)
    )
    assert isinstance(found, uuid.UUID)
    return found


async def gpus_need_approval(inventory: InventoryHarness, lab: Lab) -> None:
    """The lab's PI has its members' GPU requests wait for approval."""
    await inventory.call(
        "projects.set_policy",
        {"project_id": lab.project_id, "approval_for_gpus": True},
        token=lab.pi,
    )


async def test_only_the_pi_sets_the_approval_policy(inventory: InventoryHarness, lab: Lab) -> None:
    body = {"project_id": lab.project_id, "approval_for_gpus": True}
    assert (await inventory.refused("projects.set_policy", body, token=lab.member)).status == 403
    assert (await inventory.refused("projects.set_policy", body, token=lab.outsider)).status == 404
    policy = await inventory.call("projects.get", {"project_id": lab.project_id}, token=lab.member)
    assert policy["approval_for_gpus"] is False
    policy = await inventory.call("projects.set_policy", body, token=lab.pi)
    assert policy["approval_for_gpus"] is True
    assert policy["requires_approval_above"] is None


async def test_a_gpu_request_waits_for_the_pi_who_approves_it(
    inventory: InventoryHarness, lab: Lab, commands: Commands, db: asyncpg.Connection
) -> None:
    await gpus_need_approval(inventory, lab)
    async with (
        StreamWatch.of(inventory.nc, ApprovalRequested, deliver=DeliverPolicy.ALL) as asked,
        StreamWatch.of(inventory.nc, ApprovalDecided, deliver=DeliverPolicy.ALL) as decided,
    ):
        waiting = await inventory.call(
            "instances.request", lab.request(instance_type=lab.gpu), token=lab.member
        )
        assert (waiting["state"], waiting["version"]) == ("pending_approval", 1)
        assert waiting["host"] is None
        iid = waiting["id"]
        (request,) = await asked.wait_settled(ApprovalRequested, iid, settle_s=0.2)
        assert str(request.requested_by) == lab.member_id
        assert str(request.project_id) == lab.project_id
        assert request.instance_type == lab.gpu
        assert request.hourly_price == GPU_HOURLY
        assert "GPU" in request.why
        assert await claim_count(db, iid) == 0
        assert await lab_claimed(db, lab) == (0, 0, 0, 0)
        assert iid not in await holds_of(db, lab.budget_code_id)
        assert not await commands.about(iid)

        # A member cannot decide; the PI approves and admission places it.
        error = await inventory.refused("instances.approve", {"instance_id": iid}, token=lab.member)
        assert error.status == 403
        assert (await state_of(inventory, lab, iid))["version"] == 1
        approved = await inventory.call(
            "instances.approve", {"instance_id": iid, "reason": "fine"}, token=lab.pi
        )
        assert approved["state"] == "scheduled"
        assert approved["version"] == 3  # pending_approval → requested → scheduled
        scheduled = await commands.wait_for(InstanceScheduled, iid)
        assert scheduled.host == "gpu0"
        assert await claim_count(db, iid) == 1
        (decision,) = await decided.wait_settled(ApprovalDecided, iid, settle_s=0.2)
        assert decision.approved is True
        assert decision.version == 2
        assert decision.decided_by == await pi_user_id(db, lab)
        assert str(decision.requested_by) == lab.member_id

        # Approving again is an illegal transition and changes nothing.
        again = await inventory.refused("instances.approve", {"instance_id": iid}, token=lab.pi)
        assert (again.status, again.code) == (409, "illegal_transition")
        after = await state_of(inventory, lab, iid)
        assert (after["state"], after["version"]) == ("scheduled", 3)
        await asyncio.sleep(0.2)
        assert len(await decided.wait_settled(ApprovalDecided, iid, settle_s=0.2)) == 1

        # The PI's own GPU request does not wait.
        own = await inventory.call(
            "instances.request", lab.request(instance_type=lab.gpu), token=lab.pi
        )
        assert own["state"] == "scheduled", own
        await asyncio.sleep(0.3)
        assert await asked.about(own["id"]) == []


async def test_a_denial_needs_a_reason_and_rejects_with_it(
    inventory: InventoryHarness, lab: Lab, commands: Commands, db: asyncpg.Connection
) -> None:
    await gpus_need_approval(inventory, lab)
    async with StreamWatch.of(inventory.nc, ApprovalDecided, deliver=DeliverPolicy.ALL) as decided:
        waiting = await inventory.call(
            "instances.request", lab.request(instance_type=lab.gpu), token=lab.member
        )
        iid = waiting["id"]
        assert waiting["state"] == "pending_approval"

        missing = await inventory.refused("instances.deny", {"instance_id": iid}, token=lab.pi)
        assert (missing.status, missing.field) == (422, "reason")
        empty = await inventory.refused(
            "instances.deny", {"instance_id": iid, "reason": ""}, token=lab.pi
        )
        assert (empty.status, empty.field) == (422, "reason")
        member = await inventory.refused(
            "instances.deny", {"instance_id": iid, "reason": "no"}, token=lab.member
        )
        assert member.status == 403
        assert (await state_of(inventory, lab, iid))["version"] == 1

        denied = await inventory.call(
            "instances.deny",
            {"instance_id": iid, "reason": "use the CPU queue first"},
            token=lab.pi,
        )
        assert denied["state"] == "rejected"
        assert denied["reason_code"] == "denied"
        assert "use the CPU queue first" in denied["reason"]
        assert denied["version"] == 2
        (decision,) = await decided.wait_settled(ApprovalDecided, iid, settle_s=0.2)
        assert decision.approved is False
        assert decision.reason == "use the CPU queue first"
        assert await claim_count(db, iid) == 0
        assert not await commands.about(iid)

        later = await inventory.refused("instances.approve", {"instance_id": iid}, token=lab.pi)
        assert (later.status, later.code) == (409, "illegal_transition")


async def test_an_approved_request_still_goes_through_admission(
    inventory: InventoryHarness, lab: Lab, db: asyncpg.Connection
) -> None:
    await gpus_need_approval(inventory, lab)
    await inventory.call(
        "projects.set_quota", {"project_id": lab.project_id, "max_gpus": 1}, token=lab.admin
    )
    first, second = [
        await inventory.call(
            "instances.request", lab.request(instance_type=lab.gpu), token=lab.member
        )
        for _ in range(2)
    ]
    assert (first["state"], second["state"]) == ("pending_approval", "pending_approval")
    approved = await inventory.call("instances.approve", {"instance_id": first["id"]}, token=lab.pi)
    assert approved["state"] == "scheduled"
    over = await inventory.call("instances.approve", {"instance_id": second["id"]}, token=lab.pi)
    assert (over["state"], over["reason_code"]) == ("rejected", "quota_exceeded"), over
    assert await claim_count(db, second["id"]) == 0
    assert await lab_claimed(db, lab) == (4, 8192, 1, 1)


async def test_a_denial_reason_must_say_something(inventory: InventoryHarness, lab: Lab) -> None:
    await gpus_need_approval(inventory, lab)
    waiting = await inventory.call(
        "instances.request", lab.request(instance_type=lab.gpu), token=lab.member
    )
    blank = await inventory.refused(
        "instances.deny", {"instance_id": waiting["id"], "reason": "   "}, token=lab.pi
    )
    assert (blank.status, blank.field) == (422, "reason")
    after = await state_of(inventory, lab, waiting["id"])
    assert (after["state"], after["version"]) == ("pending_approval", 1)


async def test_requests_above_the_price_limit_wait_and_cheaper_ones_do_not(
    inventory: InventoryHarness, lab: Lab, db: asyncpg.Connection
) -> None:
    policy = await inventory.call(
        "projects.set_policy",
        {
            "project_id": lab.project_id,
            "requires_approval_above": {"amount": "0.50", "currency": "EUR"},
        },
        token=lab.pi,
    )
    assert Decimal(policy["requires_approval_above"]["amount"]) == Decimal("0.50")
    async with StreamWatch.of(inventory.nc, ApprovalRequested, deliver=DeliverPolicy.ALL) as asked:
        cheap = await inventory.call("instances.request", lab.request(), token=lab.member)
        assert cheap["state"] == "scheduled", cheap
        dear = await inventory.call(
            "instances.request", lab.request(instance_type=lab.big), token=lab.member
        )
        assert dear["state"] == "pending_approval", dear
        assert Decimal(dear["hourly_price"]["amount"]) == BIG_HOURLY
        assert await claim_count(db, dear["id"]) == 0
        (request,) = await asked.wait_settled(ApprovalRequested, dear["id"], settle_s=0.2)
        assert "0.88" in request.why, request.why
        assert "0.50" in request.why, request.why
        assert await asked.about(cheap["id"]) == []

    approved = await inventory.call("instances.approve", {"instance_id": dear["id"]}, token=lab.pi)
    assert approved["state"] == "scheduled"
    assert await claim_count(db, dear["id"]) == 1


# 5. Bad input changes nothing -----------------------------------------------------------------


class Unchanged:
    """Refused calls that must leave the lab's instances, claims and holds as they were."""

    def __init__(self, inventory: InventoryHarness, db: asyncpg.Connection, lab: Lab) -> None:
        self.inventory = inventory
        self.db = db
        self.lab = lab

    async def snapshot(self) -> tuple[Any, ...]:
        return (
            await instance_count(self.db, self.lab.project_id),
            await lab_claimed(self.db, self.lab),
            await holds_of(self.db, self.lab.budget_code_id),
        )

    async def refused(
        self, operation: str, body: dict[str, Any], *, token: str, expect: tuple[int, str | None]
    ) -> Any:
        before = await self.snapshot()
        error = await self.inventory.refused(operation, body, token=token)
        assert (error.status, error.code) == expect or (
            expect[1] is None and error.status == expect[0]
        ), (operation, error.status, error.code, error.message)
        assert await self.snapshot() == before, f"{operation} {error.code} changed something"
        return error


async def test_bad_requests_are_refused_clearly_and_change_nothing(
    inventory: InventoryHarness, lab: Lab, db: asyncpg.Connection
) -> None:
    guard = Unchanged(inventory, db, lab)
    existing = await inventory.call("instances.request", lab.request("taken"), token=lab.member)
    assert existing["state"] == "scheduled"

    async def bad(
        field: str | None, expect: tuple[int, str | None], token: str | None = None, **body: Any
    ) -> Any:
        error = await guard.refused(
            "instances.request", lab.request(**body), token=token or lab.member, expect=expect
        )
        if field is not None:
            assert error.field == field, (body, error.field, error.message)
        return error

    error = await bad("instance_type", (404, "unknown_instance_type"), instance_type="no-such")
    assert "no-such" in error.message
    error = await bad("image", (404, "unknown_image"), image="no-such-image")
    assert "no-such-image" in error.message
    await bad("datacenter", (404, "unknown_datacenter"), datacenter=f"dc-none-{tag()}")
    await bad(None, (404, None), project_id=str(uuid.uuid4()))
    await bad("project_id", (404, None), token=lab.admin, project_id=str(uuid.uuid4()))
    await bad("budget_code_id", (404, None), budget_code_id=str(uuid.uuid4()))
    other = await make_lab(inventory, db, hosts=1)
    await bad("budget_code_id", (404, None), budget_code_id=other.budget_code_id)
    await bad("name", (409, "name_taken"), name="taken")
    await bad("name", (422, "invalid"), name="has spaces")
    past = (utc_now() - timedelta(minutes=5)).isoformat()
    await bad("lease_ends_at", (422, "invalid"), lease_ends_at=past)

    # A type no host of the datacenter could ever take.
    huge = await inventory.call(
        "types.create",
        {
            "name": f"huge-{tag()}",
            "vcpus": 64,
            "memory_mib": 4096,
            "disk_gib": 10,
            "system_types": ["linux"],
            "price_tier_id": lab.tier_id,
        },
        token=lab.admin,
    )
    await bad("instance_type", (422, "too_large"), instance_type=huge["name"])

    # A retired type; an image the type does not take.
    retired = await inventory.call(
        "types.create",
        {
            "name": f"old-{tag()}",
            "vcpus": 1,
            "memory_mib": 1024,
            "disk_gib": 10,
            "system_types": ["linux"],
            "price_tier_id": lab.tier_id,
        },
        token=lab.admin,
    )
    await inventory.call("types.retire", {"instance_type_id": retired["id"]}, token=lab.admin)
    await bad("instance_type", (409, "type_retired"), instance_type=retired["name"])
    windows = await inventory.call(
        "images.create",
        {"name": f"win-{tag()}", "system_type": "windows", "source": "/images/win.qcow2"},
        token=lab.admin,
    )
    error = await bad("image", (422, "image_not_allowed"), image=windows["name"])
    assert "windows" in error.message, error.message
    assert "linux" in error.message, error.message

    # People outside the project, and finance, cannot ask for or see its instances.
    await bad(None, (404, None), token=lab.outsider)
    await bad(None, (404, None), token=other.member)
    await bad(None, (403, None), token=lab.finance)
    ref = {"instance_id": existing["id"]}
    for token in (lab.outsider, other.member, other.pi):
        assert (await inventory.refused("instances.get", ref, token=token)).status == 404
        await guard.refused("instances.delete", ref, token=token, expect=(404, None))
    finance_view = await inventory.call("instances.get", ref, token=lab.finance)
    assert finance_view["id"] == existing["id"]
    await guard.refused("instances.stop", ref, token=lab.finance, expect=(403, None))
    assert (await state_of(inventory, lab, existing["id"]))["state"] == "scheduled"


async def test_a_budget_code_the_projection_lacks_yet_is_read_through_from_auth(
    inventory: InventoryHarness, lab: Lab, db: asyncpg.Connection
) -> None:
    """A grant auth has just created may not have reached the inventory's projection: the
    request still goes through, by the code's id or by its code, and never for another
    project's code."""
    code = f"NEW-{tag()}"
    fresh_id = await budget_code(inventory, db, lab.project_id, code=code)
    forget = "DELETE FROM inventory.budget WHERE id = $1"
    await db.execute(forget, uuid.UUID(fresh_id))  # as if its event had not arrived yet

    by_code = await inventory.call(
        "instances.request", lab.request(budget_code_id=code), token=lab.member
    )
    assert (by_code["state"], by_code["budget_code_id"]) == ("scheduled", fresh_id)
    kept = await db.fetchrow(
        "SELECT code, currency, status, auth_version FROM inventory.budget WHERE id = $1",
        uuid.UUID(fresh_id),
    )
    assert tuple(kept) == (code, "EUR", "active", 1)

    await db.execute(forget, uuid.UUID(fresh_id))
    by_id = await inventory.call(
        "instances.request", lab.request(budget_code_id=fresh_id), token=lab.member
    )
    assert (by_id["state"], by_id["budget_code_id"]) == ("scheduled", fresh_id)

    other = await make_lab(inventory, db, hosts=1)
    theirs = await db.fetchval(
        "SELECT code FROM inventory.budget WHERE id = $1", uuid.UUID(other.budget_code_id)
    )
    await db.execute(forget, uuid.UUID(other.budget_code_id))
    for ref in (theirs, other.budget_code_id, f"NONE-{tag()}"):
        error = await inventory.refused(
            "instances.request", lab.request(budget_code_id=ref), token=lab.member
        )
        assert (error.status, error.field) == (404, "budget_code_id"), ref


async def test_an_instance_shows_its_budget_hold_until_it_stops(
    inventory: InventoryHarness, lab: Lab, commands: Commands
) -> None:
    ends = (utc_now() + timedelta(hours=3)).replace(microsecond=0)
    leased = await inventory.call(
        "instances.request", lab.request(lease_ends_at=ends.isoformat()), token=lab.member
    )
    hold = leased["hold"]
    assert hold["amount"]["currency"] == "EUR"
    assert abs(Decimal(hold["amount"]["amount"]) - SMALL_HOURLY * 3) < SMALL_HOURLY / 100
    assert Decimal("2.99") <= Decimal(hold["hours"]) <= Decimal("3.00")
    assert datetime.fromisoformat(hold["until"]) == ends

    running, scheduled = await running_instance(inventory, lab, commands)
    assert Decimal(running["hold"]["amount"]["amount"]) == SMALL_HOURLY * 24
    assert Decimal(running["hold"]["hours"]) == Decimal("24.00")
    await inventory.call("instances.stop", {"instance_id": running["id"]}, token=lab.member)
    await inventory.publish(stopped(scheduled))
    assert (await wait_state(inventory, lab, running["id"], "stopped"))["hold"] is None


async def test_actions_illegal_in_the_current_state_change_nothing(
    inventory: InventoryHarness, lab: Lab, db: asyncpg.Connection
) -> None:
    guard = Unchanged(inventory, db, lab)
    created = await inventory.call("instances.request", lab.request(), token=lab.member)
    ref = {"instance_id": created["id"]}
    for operation in ("instances.start", "instances.reboot", "instances.approve"):
        await guard.refused(operation, ref, token=lab.pi, expect=(409, "illegal_transition"))
        now = await state_of(inventory, lab, created["id"])
        assert (now["state"], now["version"]) == ("scheduled", created["version"]), operation

    deleting = await inventory.call("instances.delete", ref, token=lab.member)
    assert deleting["state"] == "deleting"
    for operation in ("instances.start", "instances.stop", "instances.delete"):
        await guard.refused(operation, ref, token=lab.member, expect=(409, "illegal_transition"))
        now = await state_of(inventory, lab, created["id"])
        assert (now["state"], now["version"]) == ("deleting", deleting["version"]), operation


async def test_catalogue_sizes_must_be_sane(
    inventory: InventoryHarness, lab: Lab, db: asyncpg.Connection
) -> None:
    type_body = {
        "vcpus": 2,
        "memory_mib": 2048,
        "disk_gib": 10,
        "system_types": ["linux"],
        "price_tier_id": lab.tier_id,
    }
    bad_types: list[tuple[str, Any]] = [
        ("vcpus", -2),
        ("vcpus", 0),
        ("vcpus", 100_000),
        ("memory_mib", -1),
        ("memory_mib", 10**12),
        ("disk_gib", -10),
        ("gpus", {"a100": -1}),
        ("gpus", {"a100": 10_000}),
    ]
    for field, value in bad_types:
        name = f"bad-{tag()}"
        error = await inventory.refused(
            "types.create", {**type_body, "name": name, field: value}, token=lab.admin
        )
        assert error.status == 422, (field, value, error.code)
        assert str(error.field).startswith(field), (field, error.field)
        listed = await inventory.call("types.list", {"include_retired": True}, token=lab.admin)
        assert name not in [t["name"] for t in listed]

    host_body = {
        "datacenter": lab.datacenter,
        "libvirt_uri": "test:///default",
        "vcpus": 8,
        "memory_mib": 32768,
        "disk_gib": 500,
    }
    bad_hosts: list[tuple[str, Any]] = [
        ("vcpus", 0),
        ("vcpus", -8),
        ("vcpus", 1_000_000),
        ("memory_mib", 0),
        ("memory_mib", -1),
        ("disk_gib", -1),
        ("cpu_overcommit", "0"),
        ("cpu_overcommit", "1000"),
    ]
    for field, value in bad_hosts:
        error = await inventory.refused(
            "hosts.register", {**host_body, "name": f"bad-{tag()}", field: value}, token=lab.admin
        )
        assert error.status == 422, (field, value, error.code)
        assert error.field == field, (field, error.field)
    nothing = {**host_body, "name": f"empty-{tag()}", "vcpus": 0, "memory_mib": 0, "disk_gib": 0}
    error = await inventory.refused("hosts.register", nothing, token=lab.admin)
    assert (error.status, error.field) == (422, "vcpus"), (error.status, error.field)
    hosts = await inventory.call("hosts.list", {"datacenter": lab.datacenter}, token=lab.admin)
    assert sorted(h["name"] for h in hosts["items"]) == ["gpu0", "h0", "h1"]


# 6. Requests by requirements ------------------------------------------------------------------


async def test_requirements_pick_the_cheapest_type_that_fits_now(
    inventory: InventoryHarness, lab: Lab, db: asyncpg.Connection
) -> None:
    admin = lab.admin
    t = tag()
    system = f"os{t}"
    picture = await inventory.call(
        "images.create",
        {"name": f"img-{system}", "system_type": system, "source": "/images/rq.qcow2"},
        token=admin,
    )
    tier = await inventory.call(
        "price_tiers.create",
        {
            "name": f"rq-{t}",
            "currency": "EUR",
            "effective_from": "2026-01-01T00:00:00Z",
            "rates": {"vcpu_hour": "0.01", "memory_gib_hour": "0.001", "storage_gib_month": "0"},
        },
        token=admin,
    )
    dc = f"rq-{t}"
    await inventory.call("datacenters.create", {"name": dc}, token=admin)
    await inventory.call(
        "hosts.register",
        {
            "datacenter": dc,
            "name": "only",
            "libvirt_uri": "test:///default",
            "vcpus": 4,
            "memory_mib": 8192,
            "disk_gib": 100,
            "cpu_overcommit": "1.0",
        },
        token=admin,
    )

    async def kind(name: str, vcpus: int, gib: int, systems: list[str]) -> dict[str, Any]:
        created: dict[str, Any] = await inventory.call(
            "types.create",
            {
                "name": f"{name}-{t}",
                "vcpus": vcpus,
                "memory_mib": gib * 1024,
                "disk_gib": 5,
                "system_types": systems,
                "price_tier_id": tier["id"],
            },
            token=admin,
        )
        return created

    # Hourly prices: 0.01 per vCPU and 0.001 per GiB.
    await kind("tiny", 1, 1, [system])  # 0.011: too little memory
    await kind("alien", 1, 2, [f"other{t}"])  # 0.012: another system type
    retired = await kind("retired", 1, 2, [system])  # 0.012: retired
    roomy = (await kind("roomy", 1, 6, [system]))["name"]  # 0.016: cheapest that qualifies
    wide = (await kind("wide", 2, 2, [system]))["name"]  # 0.022: the next cheapest
    await kind("full", 4, 4, [system])  # 0.044: never fits once the others run
    await inventory.call("types.retire", {"instance_type_id": retired["id"]}, token=admin)

    def ask(**requirements: Any) -> dict[str, Any]:
        return {
            "name": f"rq-{tag()}",
            "project_id": lab.project_id,
            "budget_code_id": lab.budget_code_id,
            "datacenter": dc,
            "requirements": {
                "min_vcpus": 1,
                "min_memory_gib": "1.5",
                "system_type": system,
                **requirements,
            },
        }

    guard = Unchanged(inventory, db, lab)
    over = await guard.refused(
        "instances.request_by_requirements",
        ask(max_hourly_price="0.015"),
        token=lab.member,
        expect=(409, "over_price"),
    )
    assert "0.0160" in over.message, over.message
    none = await guard.refused(
        "instances.request_by_requirements",
        {**ask(min_vcpus=1024, min_memory_gib="16384"), "image": picture["name"]},
        token=lab.member,
        expect=(404, "no_matching_type"),
    )
    assert none.field == "requirements"

    first = await inventory.call(
        "instances.request_by_requirements", ask(max_hourly_price="0.05"), token=lab.member
    )
    assert (first["state"], first["instance_type"]) == ("scheduled", roomy), first
    assert first["image"] == picture["name"]
    assert Decimal(first["hourly_price"]["amount"]) == Decimal("0.016")
    assert first["host"] == "only"

    # 1 vCPU and 2 GiB left: the cheapest no longer fits, the next cheapest that does is chosen.
    second = await inventory.call("instances.request_by_requirements", ask(), token=lab.member)
    assert (second["state"], second["instance_type"]) == ("scheduled", wide), second

    # Nothing that qualifies fits now.
    error = await inventory.refused("instances.request_by_requirements", ask(), token=lab.member)
    assert (error.status, error.code) == (409, "no_capacity"), error.message
    claimed = await db.fetchrow(
        "SELECT claimed_vcpus, claimed_memory_mib FROM inventory.host h"
        " JOIN inventory.datacenter d ON d.id = h.datacenter_id WHERE d.name = $1",
        dc,
    )
    assert claimed is not None
    assert (claimed["claimed_vcpus"], claimed["claimed_memory_mib"]) == (3, 8 * 1024)


async def test_requirements_only_pick_types_the_budget_code_can_pay_for(
    inventory: InventoryHarness, lab: Lab
) -> None:
    """A type priced in another currency is not "cheaper" by its number: the budget code pays
    in EUR, so a CHF type would only be rejected (currency_mismatch) after being chosen."""
    admin = lab.admin
    t = tag()
    system = f"cur{t}"
    await inventory.call(
        "images.create",
        {"name": f"img-{system}", "system_type": system, "source": "/images/cur.qcow2"},
        token=admin,
    )
    names = {}
    for currency, vcpu_rate in (("CHF", "0.01"), ("EUR", "0.02")):
        tier = await inventory.call(
            "price_tiers.create",
            {
                "name": f"cur-{currency}-{t}",
                "currency": currency,
                "effective_from": "2026-01-01T00:00:00Z",
                "rates": {"vcpu_hour": vcpu_rate, "memory_gib_hour": "0", "storage_gib_month": "0"},
            },
            token=admin,
        )
        created = await inventory.call(
            "types.create",
            {
                "name": f"cur-{currency.lower()}-{t}",
                "vcpus": 1,
                "memory_mib": 1024,
                "disk_gib": 5,
                "system_types": [system],
                "price_tier_id": tier["id"],
            },
            token=admin,
        )
        names[currency] = created["name"]
    chosen = await inventory.call(
        "instances.request_by_requirements",
        {
            "name": f"cur-{t}",
            "project_id": lab.project_id,
            "budget_code_id": lab.budget_code_id,
            "datacenter": lab.datacenter,
            "requirements": {"min_vcpus": 1, "min_memory_gib": "1", "system_type": system},
        },
        token=lab.member,
    )
    assert chosen["reason_code"] != "currency_mismatch", chosen
    assert (chosen["state"], chosen["instance_type"]) == ("scheduled", names["EUR"]), chosen
