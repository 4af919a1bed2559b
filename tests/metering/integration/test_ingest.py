"""Usage ticks into the counters: exact totals, duplicates, disorder, poison, two processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from datetime import timedelta

import pytest
from nats.aio.msg import Msg

from compgrid_metering.adapters.counters import Counters, Usage
from compgrid_runtime.deadletter import REASON_HEADER
from tests.harness.servers import Servers
from tests.metering.integration.conftest import (
    Datacenter,
    hours_ago,
    running_metering,
    sample,
    wait_drained,
)

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis]

US = 1_000_000


async def test_a_tick_is_counted_per_hour_instance_project_and_budget_code_exactly(
    metering_schema: Servers, datacenter: Datacenter, prefix: str, counters: Counters
) -> None:
    project, budget = uuid.uuid4(), uuid.uuid4()
    one, two = uuid.uuid4(), uuid.uuid4()
    first_hour = hours_ago(3)
    # 20 min before the hour to 10 min after the next: crosses two boundaries (1 h 30 min)
    crossing = sample(
        one,
        first_hour + timedelta(minutes=40),
        5400,
        project_id=project,
        budget_code_id=budget,
        vcpus=4,
        memory_mib=8192,
        gpus={"a100": 1},
        cpu_time_ns=5_400_000_000_001,
    )
    short = sample(
        two,
        first_hour + timedelta(minutes=5, microseconds=7),
        0.5,
        project_id=project,
        budget_code_id=budget,
        cpu_time_ns=3,
    )
    async with running_metering(metering_schema, prefix):
        await datacenter.send(datacenter.tick("h1", [crossing, short]))
        await wait_drained(datacenter.nc)

    hours = await counters.by_hour("i", one)
    assert list(hours) == [
        first_hour,
        first_hour + timedelta(hours=1),
        first_hour + timedelta(hours=2),
    ]
    assert [u.running_us for u in hours.values()] == [1200 * US, 3600 * US, 600 * US]
    total = await counters.total("i", one)
    assert total.running_us == 5400 * US
    assert total.vcpu_us == 4 * 5400 * US
    assert total.memory_mib_us == 8192 * 5400 * US
    assert total.gpu_us == {"a100": 5400 * US}
    assert total.cpu_ns == 5_400_000_000_001, "CPU time is shared out without losing a nanosecond"
    assert (await counters.total("i", two)).running_us == 500_000

    by_project = await counters.total("p", project)
    assert by_project.running_us == 5400 * US + 500_000
    assert by_project.cpu_ns == 5_400_000_000_004
    assert await counters.total("b", budget) == by_project
    assert (await counters.usage("p", project, first_hour)).running_us == 1200 * US + 500_000


async def test_a_tick_delivered_or_sent_again_is_counted_once_and_order_does_not_matter(
    metering_schema: Servers, datacenter: Datacenter, prefix: str, counters: Counters
) -> None:
    project, budget = uuid.uuid4(), uuid.uuid4()
    instance = uuid.uuid4()
    start = hours_ago(2)
    ticks = [
        datacenter.tick(
            "h1",
            [
                sample(
                    instance,
                    start + timedelta(seconds=60 * i),
                    60,
                    project_id=project,
                    budget_code_id=budget,
                    cpu_time_ns=1000 + i,
                )
            ],
            tick_id=f"{datacenter.name}/h1/{i}",
        )
        for i in range(90)  # an hour and a half, a minute a tick
    ]
    shuffled = ticks[:]
    random.Random(7).shuffle(shuffled)
    async with running_metering(metering_schema, prefix):
        for tick in shuffled:
            await datacenter.send(tick)
        # the relay publishing twice (same message id: the stream drops it) and a tick re-sent
        # much later as a new message (a new id: the stream keeps it; metering must not count it)
        for tick in shuffled[:30]:
            await datacenter.send(tick)
        for tick in shuffled[:30]:
            await datacenter.send(tick, msg_id=str(uuid.uuid4()))
        await wait_drained(datacenter.nc)
    total = await counters.total("i", instance)
    assert total.running_us == 90 * 60 * US
    assert total.cpu_ns == sum(1000 + i for i in range(90))
    hours = await counters.by_hour("i", instance)
    assert [u.running_us for u in hours.values()] == [3600 * US, 1800 * US]


async def test_a_malformed_tick_is_dead_lettered_and_the_others_are_counted(
    metering_schema: Servers, datacenter: Datacenter, prefix: str, counters: Counters
) -> None:
    project, budget = uuid.uuid4(), uuid.uuid4()
    instance = uuid.uuid4()
    good = datacenter.tick(
        "h1", [sample(instance, hours_ago(1), 30, project_id=project, budget_code_id=budget)]
    )
    body = json.loads(good.to_json())
    backwards = {**body, "samples": [{**body["samples"][0], "ended_at": "2000-01-01T00:00:00Z"}]}
    poison = [
        b"{not json",
        json.dumps({**body, "samples": "many"}).encode(),
        json.dumps(backwards).encode(),
    ]
    js = datacenter.nc.jetstream()
    letters = await js.pull_subscribe("deadletter.metering.>", stream="DEADLETTER")
    async with running_metering(metering_schema, prefix):
        for raw in poison:
            await js.publish(good.subject, raw)
        await datacenter.send(good)
        await wait_drained(datacenter.nc)
    found: list[Msg] = []
    for _ in range(20):
        with contextlib.suppress(TimeoutError):
            found += await letters.fetch(len(poison) - len(found), timeout=0.5)
        if len(found) >= len(poison):
            break
    mine = [m for m in found if m.data in poison]
    assert sorted(m.data for m in mine) == sorted(poison)
    assert {(m.headers or {}).get(REASON_HEADER) for m in mine} == {"malformed"}
    assert (await counters.total("i", instance)).running_us == 30 * US


async def test_two_metering_processes_share_the_ticks_and_count_each_once(
    metering_schema: Servers, datacenter: Datacenter, prefix: str, counters: Counters
) -> None:
    project, budget = uuid.uuid4(), uuid.uuid4()
    instances = [uuid.uuid4() for _ in range(20)]
    start = hours_ago(2)
    sent_us = 0
    async with (
        running_metering(metering_schema, prefix, usage_batch_size=8),
        running_metering(metering_schema, prefix, usage_batch_size=8),
    ):
        for i in range(200):
            samples = [
                sample(
                    instance,
                    start + timedelta(seconds=30 * i),
                    30,
                    project_id=project,
                    budget_code_id=budget,
                )
                for instance in instances
            ]
            sent_us += 30 * US * len(samples)
            await datacenter.send(datacenter.tick(f"h{i % 4}", samples))
            if i % 50 == 0:
                await asyncio.sleep(0)
        # and every tick again as a new message, while both consume
        for tick in list(datacenter.sent):
            await datacenter.send(tick, msg_id=str(uuid.uuid4()))
        await wait_drained(datacenter.nc, 60)
    assert (await counters.total("p", project)).running_us == sent_us
    for instance in instances:
        assert (await counters.total("i", instance)).running_us == 200 * 30 * US


async def test_usage_sums_add_up() -> None:
    a = Usage(1, 2, 3, 4, {"a100": 5})
    a.add(Usage(10, 20, 30, 40, {"a100": 1, "h100": 2}))
    assert a == Usage(11, 22, 33, 44, {"a100": 6, "h100": 2})
