"""Instances whose CPU use stays under the threshold long enough are reported idle, once."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest

from compgrid_events.metering import InstanceIdle
from compgrid_events.provisioner import InstanceUsage
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

MINUTE_NS = 60 * 10**9


async def test_an_instance_idle_long_enough_is_reported_once_and_a_busy_one_never(
    metering_schema: Servers, datacenter: Datacenter, prefix: str, counters: Counters
) -> None:
    project, budget = uuid.uuid4(), uuid.uuid4()
    idle, busy, brief = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    start = hours_ago(1)

    def minute(instance: uuid.UUID, i: int, cpu_share: float) -> InstanceUsage:
        return sample(
            instance,
            start + timedelta(minutes=i),
            60,
            project_id=project,
            budget_code_id=budget,
            vcpus=2,
            cpu_time_ns=int(2 * MINUTE_NS * cpu_share),
        )

    async with (
        StreamWatch(datacenter.nc, "METERING", "metering.instance.idle") as reports,
        running_metering(
            metering_schema,
            prefix,
            rollup_interval_s=0.2,
            idle_cpu_percent=5,
            idle_after_s=150,
        ),
    ):
        for i in range(4):  # four minutes at 1 %: idle for more than 150 s
            await datacenter.send(
                datacenter.tick(
                    "h1",
                    [
                        minute(idle, i, 0.01),
                        minute(busy, i, 0.5),
                        # idle two minutes, busy one, idle one: never 150 s in a row
                        minute(brief, i, 0.9 if i == 2 else 0.0),
                    ],
                )
            )
        await wait_drained(datacenter.nc)
        [event] = await reports.wait_settled(InstanceIdle, str(idle), settle_s=1.0)
        await asyncio.sleep(0.6)  # more rounds: reported once per stretch
        assert len(await reports.matching(InstanceIdle, str(idle))) == 1
        assert not await reports.matching(InstanceIdle, str(busy))
        assert not await reports.matching(InstanceIdle, str(brief))

        # busy again, then idle again for long enough: a new stretch, a new report
        await datacenter.send(datacenter.tick("h1", [minute(idle, 4, 0.6)]))
        for i in range(5, 9):
            await datacenter.send(datacenter.tick("h1", [minute(idle, i, 0.0)]))
        await wait_drained(datacenter.nc)
        events = await reports.wait_settled(InstanceIdle, str(idle), count=2, settle_s=1.0)
    assert event.project_id == project
    assert event.idle_since == start
    assert event.cpu_utilisation_percent == Decimal("1.000")
    assert events[1].idle_since == start + timedelta(minutes=5)
    assert events[1].cpu_utilisation_percent == Decimal(0)
