"""200 concurrent requests racing for the last capacity never overcommit.

One inventory process answers the requests of one RPC operation one at a time (FastStream's
core subscriber runs one handler at a time), and admissions of one project are serialised by
the project's row lock. So that the requests really race for the same host rows, the test runs
three more inventory processes beside the harness's (RPC only, in the queue group
``inventory-rpc``, as a scaled-out deployment would) and spreads the requests over four
projects. All 200 calls are in flight at once (one ``asyncio.gather``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from compgrid_events.inventory import InstanceScheduled
from compgrid_runtime.app import ServiceApp
from tests.inventory.integration.conftest import (
    Commands,
    InventoryHarness,
    Lab,
    extra_processes,
    funded_project,
    make_lab,
    tag,
)

pytestmark = [pytest.mark.postgres, pytest.mark.nats]

REQUESTS = 200
PROJECTS = 4
EXTRA_PROCESSES = 3


@pytest.fixture
async def more_processes(inventory: InventoryHarness) -> AsyncIterator[list[ServiceApp]]:
    """Further inventory processes answering requests (no consumers, no background jobs)."""
    async with extra_processes(inventory, EXTRA_PROCESSES) as apps:
        yield apps


async def project_with_code(
    inventory: InventoryHarness, db: asyncpg.Connection, member_id: str
) -> tuple[str, str]:
    """A further project (through auth) with ``member_id`` in it and a budget code."""
    pi_id, _ = await inventory.auth.user("pi")
    suffix = tag()
    return await funded_project(
        inventory, db, name=f"race-{suffix}", pi_id=pi_id, member_id=member_id, code=f"R-{suffix}"
    )


def fitting(hosts: list[dict[str, Any]], vcpus: int, memory_mib: int, disk_gib: int) -> int:
    """How many instances of one size fit on empty hosts, each by its scarcest resource."""
    total = 0
    for h in hosts:
        cpu = int(h["vcpus"] * float(h["cpu_overcommit"])) // vcpus
        memory = int(h["memory_mib"] * float(h["memory_overcommit"])) // memory_mib
        total += min(cpu, memory, h["disk_gib"] // disk_gib)
    return total


async def test_200_concurrent_requests_racing_for_the_last_capacity_never_overcommit(
    inventory: InventoryHarness, db: asyncpg.Connection, more_processes: list[ServiceApp]
) -> None:
    lab: Lab = await make_lab(inventory, db, hosts=3, host_vcpus=8)
    hosts = (await inventory.call("hosts.list", {"datacenter": lab.datacenter}, token=lab.admin))[
        "items"
    ]
    assert sorted(h["name"] for h in hosts) == ["gpu0", "h0", "h1", "h2"]
    fits = fitting(hosts, vcpus=2, memory_mib=2048, disk_gib=10)
    assert fits == 3 * 4 + 8  # vCPU is the scarce resource: 8/2 on each host, 16/2 on gpu0

    researcher_id, email = await inventory.auth.user("member")
    await inventory.auth.call(
        "projects.add_member",
        {"project_id": lab.project_id, "user_id": researcher_id, "role": "member"},
        token=lab.admin,
    )
    grants = [(lab.project_id, lab.budget_code_id)]
    for _ in range(PROJECTS - 1):
        grants.append(await project_with_code(inventory, db, researcher_id))
    researcher = await inventory.auth.login(email)
    for project_id, _ in grants:
        await inventory.call(
            "projects.set_quota",
            {
                "project_id": project_id,
                "max_instances": 1000,
                "max_vcpus": 100_000,
                "max_memory_mib": 100_000_000,
            },
            token=lab.admin,
        )

    bodies = [
        lab.request(
            f"race-{index}",
            project_id=grants[index % PROJECTS][0],
            budget_code_id=grants[index % PROJECTS][1],
        )
        for index in range(REQUESTS)
    ]
    started = time.perf_counter()
    results = await asyncio.gather(
        *(inventory.call("instances.request", body, token=researcher) for body in bodies),
        return_exceptions=True,
    )
    elapsed = time.perf_counter() - started
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == [], f"{len(errors)} calls failed, first: {errors[:1]!r}"
    answers: list[dict[str, Any]] = [r for r in results if isinstance(r, dict)]

    states = Counter(a["state"] for a in answers)
    assert states == {"scheduled": fits, "rejected": REQUESTS - fits}, (states, elapsed)
    rejected = [a for a in answers if a["state"] == "rejected"]
    assert {a["reason_code"] for a in rejected} == {"no_capacity"}
    assert all(a["host"] is None for a in rejected)
    scheduled = {a["id"]: a for a in answers if a["state"] == "scheduled"}
    assert len({a["project_id"] for a in scheduled.values()}) > 1, "projects raced"

    # No host holds more than it has, and every host is exactly full.
    rows = await db.fetch(
        "SELECT h.id, h.name, h.vcpus, h.cpu_overcommit, h.memory_mib, h.memory_overcommit,"
        " h.disk_gib, h.claimed_vcpus, h.claimed_memory_mib, h.claimed_disk_gib"
        " FROM inventory.host h JOIN inventory.datacenter d ON d.id = h.datacenter_id"
        " WHERE d.name = $1",
        lab.datacenter,
    )
    for row in rows:
        limit = int(row["vcpus"] * row["cpu_overcommit"])
        assert row["claimed_vcpus"] <= limit, row["name"]
        assert row["claimed_vcpus"] == limit, f"{row['name']} should be full"
        assert row["claimed_memory_mib"] <= int(row["memory_mib"] * row["memory_overcommit"])
        assert row["claimed_disk_gib"] <= row["disk_gib"]

    # Claim rows and scheduled instances match one to one, host by host.
    claims = await db.fetch(
        "SELECT c.id, c.host_id, c.vcpus, c.memory_mib, c.disk_gib FROM inventory.claim c"
        " WHERE c.host_id = ANY($1::uuid[])",
        [row["id"] for row in rows],
    )
    assert sorted(str(c["id"]) for c in claims) == sorted(scheduled)
    placed = await db.fetch(
        "SELECT id, host_id, state FROM inventory.instance WHERE id = ANY($1::uuid[])",
        [uuid.UUID(i) for i in scheduled],
    )
    host_of = {str(p["id"]): p["host_id"] for p in placed}
    for claim in claims:
        assert claim["host_id"] == host_of[str(claim["id"])]
        assert (claim["vcpus"], claim["memory_mib"], claim["disk_gib"]) == (2, 2048, 10)
    for row in rows:
        mine = [c for c in claims if c["host_id"] == row["id"]]
        assert row["claimed_vcpus"] == sum(c["vcpus"] for c in mine)
        assert row["claimed_memory_mib"] == sum(c["memory_mib"] for c in mine)
        assert row["claimed_disk_gib"] == sum(c["disk_gib"] for c in mine)
    per_host = Counter(str(p["host_id"]) for p in placed)
    assert per_host == {lab.hosts[h]: n for h, n in (("h0", 4), ("h1", 4), ("h2", 4))} | {
        lab.hosts["gpu0"]: 8
    }
    live = await db.fetchval(
        "SELECT count(*) FROM inventory.instance WHERE requested_datacenter = $1"
        " AND state = 'scheduled'",
        lab.datacenter,
    )
    assert live == fits

    # One provisioning command per scheduled instance, none for the rejected ones (the watcher
    # reads the stream from its start).
    async with Commands(inventory.nc, lab.datacenter) as commands:
        commanded = await commands.wait_settled(
            InstanceScheduled, count=fits, settle_s=0.5, timeout_s=20
        )
        assert sorted(str(e.instance_id) for e in commanded) == sorted(scheduled)
        for event in commanded:
            assert event.host == scheduled[str(event.instance_id)]["host"]
