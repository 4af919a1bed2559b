"""Capacity claims against real Postgres: concurrent requests never overcommit a host, claims
come back on release, and the reason is clear when nothing fits."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from compgrid_inventory.adapters.claims import candidates, place, release
from compgrid_inventory.domain.placement import Constraints, Demand, NoPlacement, Strategy
from compgrid_runtime.db import create_engine, session_factory
from compgrid_runtime.migrations import upgrade
from tests.harness.servers import Servers

pytestmark = [pytest.mark.postgres]


@pytest.fixture(scope="module")
async def engine(real: Servers) -> AsyncIterator[AsyncEngine]:
    await asyncio.to_thread(upgrade, "compgrid_inventory", real.database_url)
    engine = create_engine(real.database_url, pool_size=20)
    yield engine
    await engine.dispose()


async def datacenter(engine: AsyncEngine, **hosts: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Create a datacenter with hosts {name: columns} and a live provisioner worker (placement
    uses no other); return its name and {name: host id}."""
    name = f"dc-{uuid.uuid4().hex[:8]}"
    dc_id = uuid.uuid4()
    ids: dict[str, Any] = {}
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO inventory.datacenter (id, name) VALUES (:id, :name)"),
            {"id": dc_id, "name": name},
        )
        await conn.execute(
            text(
                "INSERT INTO inventory.worker (id, datacenter, hostname, pid, started_at,"
                " last_seen_at, interval_s) VALUES (:id, :name, 'test', 0, now(), now(), 3600)"
            ),
            {"id": f"worker-{name}", "name": name},
        )
        for host_name, columns in hosts.items():
            values = {
                "vcpus": 8,
                "memory_mib": 16384,
                "disk_gib": 200,
                "cpu_overcommit": 1,
                "gpus": "{}",
                "labels": "{}",
                "state": "active",
                **columns,
            }
            ids[host_name] = uuid.uuid4()
            await conn.execute(
                text(
                    "INSERT INTO inventory.host (id, datacenter_id, name, libvirt_uri, vcpus,"
                    " memory_mib, disk_gib, cpu_overcommit, gpus, labels, state)"
                    " VALUES (:id, :dc, :name, 'test:///default', :vcpus, :memory_mib,"
                    " :disk_gib, :cpu_overcommit, CAST(:gpus AS jsonb), CAST(:labels AS jsonb),"
                    " :state)"
                ),
                {"id": ids[host_name], "dc": dc_id, "name": host_name, **values},
            )
    return name, ids


async def host_row(engine: AsyncEngine, host_id: Any) -> Any:
    async with engine.connect() as conn:
        return (
            await conn.execute(text("SELECT * FROM inventory.host WHERE id = :id"), {"id": host_id})
        ).one()


async def try_place(engine: AsyncEngine, demand: Demand, dc: str, **kw: Any) -> str | None:
    """Place one instance in its own transaction; return the host name or None when refused."""
    sessions = session_factory(engine)
    async with sessions() as session, session.begin():
        try:
            chosen = await place(session, uuid.uuid4(), demand, Constraints(datacenter=dc), **kw)
        except NoPlacement:
            return None
        return chosen.name


async def test_200_concurrent_requests_never_overcommit(engine: AsyncEngine) -> None:
    # 3 hosts of 8 vCPU = 24 one-vCPU instances fit; 200 ask at once.
    dc, ids = await datacenter(engine, a={}, b={}, c={})
    demand = Demand(vcpus=1, memory_mib=512, disk_gib=1)
    results = await asyncio.gather(*(try_place(engine, demand, dc) for _ in range(200)))
    placed = [r for r in results if r is not None]
    assert len(placed) == 24
    for host_id in ids.values():
        row = await host_row(engine, host_id)
        assert row.claimed_vcpus == 8
    async with engine.connect() as conn:
        claims = await conn.scalar(
            text("SELECT count(*) FROM inventory.claim WHERE host_id = ANY(:ids)"),
            {"ids": list(ids.values())},
        )
    assert claims == 24


async def test_release_gives_capacity_back_once(engine: AsyncEngine) -> None:
    dc, ids = await datacenter(engine, only={"gpus": '{"a100": 2}'})
    instance = uuid.uuid4()
    demand = Demand(vcpus=4, memory_mib=8192, disk_gib=50, gpus={"a100": 2})
    sessions = session_factory(engine)
    async with sessions() as session, session.begin():
        await place(session, instance, demand, Constraints(datacenter=dc))
    row = await host_row(engine, ids["only"])
    assert (row.claimed_vcpus, row.claimed_memory_mib, row.claimed_gpus) == (4, 8192, {"a100": 2})
    assert await try_place(engine, Demand(1, 512, 1, {"a100": 1}), dc) is None
    async with sessions() as session, session.begin():
        assert await release(session, instance) is True
    async with sessions() as session, session.begin():
        assert await release(session, instance) is False  # a second release changes nothing
    row = await host_row(engine, ids["only"])
    assert (row.claimed_vcpus, row.claimed_memory_mib, row.claimed_gpus) == (0, 0, {"a100": 0})
    assert await try_place(engine, Demand(1, 512, 1, {"a100": 1}), dc) == "only"


async def test_pack_and_spread_choose_differently(engine: AsyncEngine) -> None:
    dc, _ = await datacenter(engine, first={}, second={})
    demand = Demand(vcpus=1, memory_mib=512, disk_gib=1)
    packed = [await try_place(engine, demand, dc, strategy=Strategy.PACK) for _ in range(3)]
    assert len(set(packed)) == 1
    dc2, _ = await datacenter(engine, first={}, second={})
    spread = [await try_place(engine, demand, dc2, strategy=Strategy.SPREAD) for _ in range(4)]
    assert sorted(str(name) for name in spread) == ["first", "first", "second", "second"]


async def test_hosts_in_maintenance_or_down_take_no_work(engine: AsyncEngine) -> None:
    dc, _ = await datacenter(engine, m={"state": "maintenance"}, d={"state": "down"})
    sessions = session_factory(engine)
    async with sessions() as session, session.begin():
        with pytest.raises(NoPlacement) as refused:
            await place(session, uuid.uuid4(), Demand(1, 512, 1), Constraints(datacenter=dc))
    assert refused.value.code == "no_capacity"


async def test_too_large_is_refused_with_the_reason_and_no_claim(engine: AsyncEngine) -> None:
    dc, ids = await datacenter(engine, h={})
    instance = uuid.uuid4()
    sessions = session_factory(engine)
    async with sessions() as session, session.begin():
        with pytest.raises(NoPlacement) as refused:
            await place(session, instance, Demand(64, 512, 1), Constraints(datacenter=dc))
    assert refused.value.code == "too_large"
    async with engine.connect() as conn:
        assert (
            await conn.scalar(
                text("SELECT count(*) FROM inventory.claim WHERE id = :id"), {"id": instance}
            )
            == 0
        )
    assert (await host_row(engine, ids["h"])).claimed_vcpus == 0


async def test_the_database_refuses_an_overcommitted_host_whatever_the_code_does(
    engine: AsyncEngine,
) -> None:
    _, ids = await datacenter(engine, h={})
    with pytest.raises(IntegrityError, match="claims_within_capacity"):
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE inventory.host SET claimed_vcpus = 9 WHERE id = :id"), {"id": ids["h"]}
            )
    with pytest.raises(IntegrityError, match="capacity_positive"):
        await datacenter(engine, zero={"vcpus": 0})


async def test_a_claim_is_undone_with_the_callers_transaction(engine: AsyncEngine) -> None:
    # The claim is the session's first statement here: it must still join the session's
    # transaction (not commit on its own), so the caller's rollback takes it back.
    dc, ids = await datacenter(engine, h={})
    instance = uuid.uuid4()
    sessions = session_factory(engine)
    async with sessions() as session:
        await session.begin()
        await place(session, instance, Demand(2, 1024, 10), Constraints(datacenter=dc))
        await session.rollback()
    assert (await host_row(engine, ids["h"])).claimed_vcpus == 0
    async with engine.connect() as conn:
        assert (
            await conn.scalar(
                text("SELECT count(*) FROM inventory.claim WHERE id = :id"), {"id": instance}
            )
            == 0
        )


async def test_a_claim_commits_with_what_the_caller_wrote_before_and_after(
    engine: AsyncEngine,
) -> None:
    dc, ids = await datacenter(engine, h={})
    before, after = f"before-{uuid.uuid4().hex[:8]}", f"after-{uuid.uuid4().hex[:8]}"
    instance = uuid.uuid4()
    write = text("INSERT INTO inventory.datacenter (id, name) VALUES (:id, :name)")
    sessions = session_factory(engine)
    async with sessions() as session, session.begin():
        await session.execute(write, {"id": uuid.uuid4(), "name": before})
        chosen = await place(session, instance, Demand(2, 1024, 10), Constraints(datacenter=dc))
        await session.execute(write, {"id": uuid.uuid4(), "name": after})
    assert chosen.name == "h"
    assert chosen.claimed_vcpus == 2  # the host as claimed
    assert (await host_row(engine, ids["h"])).claimed_vcpus == 2
    async with engine.connect() as conn:
        names = await conn.scalar(
            text("SELECT count(*) FROM inventory.datacenter WHERE name IN (:a, :b)"),
            {"a": before, "b": after},
        )
    assert names == 2
    # And the other way: a write before the claim, then a rollback, undoes both.
    async with sessions() as session:
        await session.begin()
        await session.execute(write, {"id": uuid.uuid4(), "name": f"gone-{before}"})
        await place(session, uuid.uuid4(), Demand(2, 1024, 10), Constraints(datacenter=dc))
        await session.rollback()
    assert (await host_row(engine, ids["h"])).claimed_vcpus == 2


async def test_one_claim_per_instance_is_an_integrity_error(engine: AsyncEngine) -> None:
    dc, ids = await datacenter(engine, h={})
    instance = uuid.uuid4()
    sessions = session_factory(engine)
    async with sessions() as session, session.begin():
        await place(session, instance, Demand(1, 512, 1), Constraints(datacenter=dc))
    with pytest.raises(IntegrityError, match="pk_claim"):
        async with sessions() as session, session.begin():
            await place(session, instance, Demand(1, 512, 1), Constraints(datacenter=dc))
    assert (await host_row(engine, ids["h"])).claimed_vcpus == 1


async def test_gpu_work_goes_to_gpu_hosts_and_other_work_prefers_hosts_without(
    engine: AsyncEngine,
) -> None:
    dc, _ = await datacenter(engine, cpu={}, gpu={"gpus": '{"a100": 2}'})
    assert await try_place(engine, Demand(1, 512, 1), dc) == "cpu"
    assert await try_place(engine, Demand(1, 512, 1, {"a100": 1}), dc) == "gpu"
    assert await try_place(engine, Demand(1, 512, 1, {"a100": 1}), dc) == "gpu"
    assert await try_place(engine, Demand(1, 512, 1, {"a100": 1}), dc) is None  # all claimed


async def reason(engine: AsyncEngine, demand: Demand, constraints: Constraints) -> str:
    sessions = session_factory(engine)
    async with sessions() as session, session.begin():
        with pytest.raises(NoPlacement) as refused:
            await place(session, uuid.uuid4(), demand, constraints)
    return refused.value.code


async def test_the_reason_says_why_nothing_fits(engine: AsyncEngine) -> None:
    dc, _ = await datacenter(
        engine, full={"gpus": '{"a100": 1}', "labels": '{"rack": "r1"}'}, other={}
    )
    assert await try_place(engine, Demand(1, 512, 1, {"a100": 1}), dc) == "full"
    gpu = Demand(1, 512, 1, {"a100": 1})
    assert await reason(engine, gpu, Constraints(datacenter=dc)) == "no_capacity"
    assert await reason(engine, Demand(1, 512, 1, {"h100": 1}), Constraints(dc)) == "too_large"
    assert await reason(engine, Demand(1, 512, 1, {"a100": 2}), Constraints(dc)) == "too_large"
    elsewhere = Constraints(datacenter=dc, labels={"rack": "r2"})
    assert await reason(engine, Demand(1, 512, 1), elsewhere) == "no_matching_host"
    assert await reason(engine, Demand(1, 512, 1), Constraints(f"no-{dc}")) == "no_matching_host"
    on_rack = Constraints(datacenter=dc, labels={"rack": "r1"})
    assert await reason(engine, Demand(1, 65536, 1), on_rack) == "too_large"


async def test_candidates_are_the_best_few_that_fit_in_weigher_order(engine: AsyncEngine) -> None:
    hosts = {f"h{i:02d}": {"vcpus": 4 + i} for i in range(12)}
    dc, _ = await datacenter(engine, big={"vcpus": 64, "gpus": '{"a100": 1}'}, **hosts)
    sessions = session_factory(engine)
    async with sessions() as session, session.begin():
        packed = await candidates(session, Demand(6, 512, 1), Constraints(dc), Strategy.PACK)
        spread = await candidates(session, Demand(6, 512, 1), Constraints(dc), Strategy.SPREAD)
    assert [h.name for h in packed] == ["h02", "h03", "h04", "h05", "h06", "h07", "h08", "h09"]
    assert [h.name for h in spread] == ["h11", "h10", "h09", "h08", "h07", "h06", "h05", "h04"]


async def test_a_session_without_a_transaction_to_join_still_claims(engine: AsyncEngine) -> None:
    # Without a surrounding transaction the claim is one statement, atomic on its own.
    dc, ids = await datacenter(engine, h={})
    sessions = session_factory(engine.execution_options(isolation_level="AUTOCOMMIT"))
    async with sessions() as session:
        chosen = await place(session, uuid.uuid4(), Demand(3, 512, 1), Constraints(dc))
    assert chosen.name == "h"
    assert (await host_row(engine, ids["h"])).claimed_vcpus == 3
