"""Placement decisions per second with concurrent claims, against a raw SQL claim loop.

Setup: one datacenter with 1,000 hosts (64 vCPU, 256 GiB, 2 TB; a tenth of them with 4 GPUs),
and 10,000 instance demands drawn with a fixed seed (1-8 vCPU, 1-32 GiB, 10-200 GiB; one in
twenty asks for a GPU).

Ours: ``claims.place`` for every demand, 16 at a time, each in its own transaction of a
SQLAlchemy session from the service's own engine (the way a request is admitted): one statement
picks the best host that fits in weigher order and is not being claimed (``FOR UPDATE SKIP
LOCKED``), adds the demand to its claimed counters and records the claim; then commit. When
nothing fits, the domain says why. Latency is per decision, session to commit.

Baseline, same run, same schema, same concurrency: the raw claim — one
``UPDATE inventory.host … WHERE id = $1 AND <fits> RETURNING id`` per demand on a host picked
in advance, through asyncpg, autocommit. No choice, no claim row: the cost of the claim alone.

After each run the benchmark counts hosts whose claims exceed their capacity: it must be 0.

It also reports ``session_floor``: decisions/s of a placement
that does nothing (``SELECT 1``) in the same engine, session and transaction — what any
``place`` costs before it places anything — and ``floor_ratio``, that against the baseline.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from typing import Any

import asyncpg
from sqlalchemy import text

from bench.common import bench_servers, percentile, report
from compgrid_inventory.adapters.claims import place
from compgrid_inventory.domain.placement import Constraints, Demand, NoPlacement, Strategy
from compgrid_runtime.db import create_engine, session_factory
from compgrid_runtime.migrations import upgrade

HOSTS = int(os.environ.get("COMPGRID_BENCH_HOSTS", "1000"))
DECISIONS = int(os.environ.get("COMPGRID_BENCH_DECISIONS", "10000"))
CONCURRENCY = 16
DATACENTER = "bench-dc"

OVERCOMMITTED = """
SELECT count(*) FROM inventory.host
WHERE claimed_vcpus > floor(vcpus * cpu_overcommit)
   OR claimed_memory_mib > floor(memory_mib * memory_overcommit)
   OR claimed_disk_gib > disk_gib
   OR EXISTS (
       SELECT 1 FROM jsonb_each_text(claimed_gpus) c
       WHERE c.value::int > coalesce((gpus ->> c.key)::int, 0))
"""


def demands(count: int) -> list[Demand]:
    """The same demands every run."""
    rng = random.Random(7)
    return [
        Demand(
            vcpus=rng.randint(1, 8),
            memory_mib=rng.randint(1, 32) * 1024,
            disk_gib=rng.randint(10, 200),
            gpus={"a100": 1} if rng.random() < 0.05 else {},
        )
        for _ in range(count)
    ]


async def seed(conn: asyncpg.Connection) -> list[uuid.UUID]:
    """Create the datacenter and its hosts; return the host ids."""
    dc_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO inventory.datacenter (id, name) VALUES ($1, $2)", dc_id, DATACENTER
    )
    ids = [uuid.uuid4() for _ in range(HOSTS)]
    await conn.executemany(
        "INSERT INTO inventory.host (id, datacenter_id, name, libvirt_uri, vcpus, memory_mib,"
        " disk_gib, cpu_overcommit, gpus) VALUES ($1, $2, $3, 'test:///default', 64, 262144,"
        " 2000, 1.0, $4::jsonb)",
        [
            (host_id, dc_id, f"host-{i:04d}", json.dumps({"a100": 4} if i % 10 == 0 else {}))
            for i, host_id in enumerate(ids)
        ],
    )
    return ids


async def reset(conn: asyncpg.Connection) -> None:
    """Give every claim back."""
    await conn.execute("DELETE FROM inventory.claim")
    await conn.execute(
        "UPDATE inventory.host SET claimed_vcpus = 0, claimed_memory_mib = 0,"
        " claimed_disk_gib = 0, claimed_gpus = '{}'::jsonb"
    )


async def run_ours(database_url: str, work: list[Demand]) -> tuple[float, list[float], int]:
    """Return (decisions/s, latencies in ms, refused)."""
    engine = create_engine(database_url, pool_size=CONCURRENCY)
    sessions = session_factory(engine)
    queue: asyncio.Queue[Demand] = asyncio.Queue()
    for demand in work:
        queue.put_nowait(demand)
    latencies: list[float] = []
    refused = 0
    constraints = Constraints(datacenter=DATACENTER)

    async def worker() -> None:
        nonlocal refused
        while not queue.empty():
            demand = queue.get_nowait()
            started = time.perf_counter()
            try:
                async with sessions() as session, session.begin():
                    await place(session, uuid.uuid4(), demand, constraints, Strategy.PACK)
            except NoPlacement:
                refused += 1
            latencies.append((time.perf_counter() - started) * 1000)

    async with engine.connect() as warm:  # open the pool before the clock starts
        await warm.exec_driver_sql("SELECT 1")
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    await engine.dispose()
    return len(work) / elapsed, latencies, refused


async def run_floor(database_url: str, count: int) -> float:
    """Return transactions/s of ``run_ours`` with ``place`` replaced by ``SELECT 1``."""
    engine = create_engine(database_url, pool_size=CONCURRENCY)
    sessions = session_factory(engine)
    left = count

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            async with sessions() as session, session.begin():
                await session.execute(text("SELECT 1"))

    async with engine.connect() as warm:
        await warm.exec_driver_sql("SELECT 1")
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    await engine.dispose()
    return count / elapsed


async def run_raw(dsn: str, work: list[Demand], hosts: list[uuid.UUID]) -> tuple[float, int]:
    """Return (claims/s, refused) of the bare conditional UPDATE on pre-chosen hosts."""
    pool = await asyncpg.create_pool(dsn, min_size=CONCURRENCY, max_size=CONCURRENCY)
    rng = random.Random(11)
    queue: asyncio.Queue[tuple[Demand, uuid.UUID]] = asyncio.Queue()
    for demand in work:
        queue.put_nowait((demand, rng.choice(hosts)))
    refused = 0
    statement = (
        "UPDATE inventory.host SET claimed_vcpus = claimed_vcpus + $2,"
        " claimed_memory_mib = claimed_memory_mib + $3, claimed_disk_gib = claimed_disk_gib + $4"
        " WHERE id = $1 AND claimed_vcpus + $2 <= floor(vcpus * cpu_overcommit)"
        " AND claimed_memory_mib + $3 <= floor(memory_mib * memory_overcommit)"
        " AND claimed_disk_gib + $4 <= disk_gib RETURNING id"
    )

    async def worker() -> None:
        nonlocal refused
        async with pool.acquire() as conn:
            while not queue.empty():
                demand, host_id = queue.get_nowait()
                got = await conn.fetchval(
                    statement, host_id, demand.vcpus, demand.memory_mib, demand.disk_gib
                )
                refused += got is None

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    await pool.close()
    return len(work) / elapsed, refused


async def main() -> None:
    """Run both loops on the same schema and print the JSON line."""
    work = demands(DECISIONS)
    async with bench_servers() as (database_url, _):
        await asyncio.to_thread(upgrade, "compgrid_inventory", database_url)
        dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        conn = await asyncpg.connect(dsn)
        try:
            hosts = await seed(conn)
            await conn.execute("ANALYZE inventory.host")
            raw_rate, raw_refused = await run_raw(dsn, work, hosts)
            raw_over = await conn.fetchval(OVERCOMMITTED)
            await reset(conn)
            rate, latencies, refused = await run_ours(database_url, work)
            over = await conn.fetchval(OVERCOMMITTED)
            claims = await conn.fetchval("SELECT count(*) FROM inventory.claim")
            floor = await run_floor(database_url, DECISIONS)
        finally:
            await conn.close()
    assert over == 0, f"{over} hosts overcommitted"
    assert raw_over == 0, f"{raw_over} hosts overcommitted by the raw loop"
    assert claims == DECISIONS - refused
    extra: dict[str, Any] = {
        "p99_ms": round(percentile(latencies, 99), 2),
        "p50_ms": round(percentile(latencies, 50), 2),
        "overcommitted_hosts": over,
        "hosts": HOSTS,
        "decisions": DECISIONS,
        "refused": refused,
        "raw_refused": raw_refused,
        "concurrency": CONCURRENCY,
        "session_floor": round(floor, 3),
        "floor_ratio": round(floor / raw_rate, 3),
    }
    report("placement", rate, "decisions/s", raw_rate, rate / raw_rate, **extra)


if __name__ == "__main__":
    asyncio.run(main())
