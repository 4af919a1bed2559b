"""Closed hours into Postgres and ``UsageRecorded``; late usage corrects them."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from decimal import Decimal

import asyncpg
import pytest

from compgrid_events.metering import UsageRecorded
from compgrid_metering.adapters.counters import Counters
from tests.harness.servers import Servers
from tests.harness.streams import StreamWatch
from tests.metering.integration.conftest import (
    Datacenter,
    hours_ago,
    running_metering,
    sample,
    wait_drained,
)

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis]

FAST = {"rollup_interval_s": 0.2, "rollup_lateness_s": 0}


async def _rows(real: Servers, instance_id: uuid.UUID) -> list[asyncpg.Record]:
    db = await asyncpg.connect(real.database_url.replace("+asyncpg", ""))
    try:
        return await db.fetch(
            "SELECT * FROM metering.rollup WHERE instance_id = $1 ORDER BY hour_start",
            instance_id,
        )
    finally:
        await db.close()


async def test_closed_hours_are_rolled_up_and_published_once_and_the_open_hour_is_not(
    metering_schema: Servers, datacenter: Datacenter, prefix: str, counters: Counters
) -> None:
    project, budget = uuid.uuid4(), uuid.uuid4()
    instance = uuid.uuid4()
    h3 = hours_ago(3)
    crossing = sample(
        instance,
        h3 + timedelta(minutes=30),
        3600,  # half of hour -3, half of hour -2
        project_id=project,
        budget_code_id=budget,
        vcpus=2,
        memory_mib=1536,
        gpus={"a100": 1},
        cpu_time_ns=1_800_000_000_000,
    )
    now = sample(instance, hours_ago(0), 1, project_id=project, budget_code_id=budget)
    async with (
        StreamWatch(datacenter.nc, "METERING", "metering.usage.recorded") as recorded,
        running_metering(metering_schema, prefix, **FAST),
    ):
        await datacenter.send(datacenter.tick("h1", [crossing, now]))
        await wait_drained(datacenter.nc)
        events = await recorded.wait_settled(UsageRecorded, str(instance), count=2, settle_s=1.0)
    assert [(e.hour_start, e.revision) for e in events] == [(h3, 1), (h3 + timedelta(hours=1), 1)]
    first = events[0]
    assert (first.project_id, first.budget_code_id) == (project, budget)
    assert first.running_seconds == Decimal(1800)
    assert first.vcpu_seconds == Decimal(3600)
    assert first.memory_gib_seconds == Decimal(1800) * Decimal("1.5")
    assert first.gpu_seconds == {"a100": Decimal(1800)}
    assert first.cpu_time_seconds == Decimal(900)
    rows = await _rows(metering_schema, instance)
    assert [(r["hour_start"], r["revision"], r["running_us"]) for r in rows] == [
        (h3, 1, 1_800_000_000),
        (h3 + timedelta(hours=1), 1, 1_800_000_000),
    ], "the open hour is not rolled up"


async def test_usage_arriving_after_an_hour_closed_publishes_a_correction(
    metering_schema: Servers, datacenter: Datacenter, prefix: str, counters: Counters
) -> None:
    project, budget = uuid.uuid4(), uuid.uuid4()
    instance = uuid.uuid4()
    h2 = hours_ago(2)
    early = sample(instance, h2, 600, project_id=project, budget_code_id=budget)
    late = sample(
        instance, h2 + timedelta(minutes=30), 60, project_id=project, budget_code_id=budget
    )
    async with (
        StreamWatch(datacenter.nc, "METERING", "metering.usage.recorded") as recorded,
        running_metering(metering_schema, prefix, **FAST),
    ):
        await datacenter.send(datacenter.tick("h1", [early]))
        first = await recorded.wait_for(UsageRecorded, str(instance))
        assert (first.revision, first.running_seconds) == (1, Decimal(600))
        await datacenter.send(datacenter.tick("h1", [late]))
        await wait_drained(datacenter.nc)
        await asyncio.sleep(0.5)
        events = await recorded.wait_settled(UsageRecorded, str(instance), count=2, settle_s=1.0)
    assert [(e.revision, e.running_seconds) for e in events] == [
        (1, Decimal(600)),
        (2, Decimal(660)),
    ]
    [row] = await _rows(metering_schema, instance)
    assert (row["revision"], row["running_us"]) == (2, 660_000_000)
    assert (await counters.total("i", instance)).running_us == 660_000_000
