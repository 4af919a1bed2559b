"""Redis loses the counters mid-run; a rebuild from the usage stream restores the same totals."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from datetime import datetime, timedelta

import pytest

from compgrid_events.metering import UsageRecorded
from compgrid_events.provisioner import UsageTick
from compgrid_metering.adapters.counters import Counters
from compgrid_metering.use_cases.rebuild import rebuild
from compgrid_runtime.errors import Invalid
from tests.harness.servers import Servers
from tests.harness.streams import StreamWatch
from tests.metering.integration.conftest import (
    Datacenter,
    hours_ago,
    metering_environment,
    running_metering,
    sample,
    wait_drained,
)
from tests.runtime.integration.waiting import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis]

US = 1_000_000


async def _wipe(counters: Counters, prefix: str) -> None:
    keys = [k async for k in counters.redis.scan_iter(match=f"{prefix}*", count=1000)]
    for start in range(0, len(keys), 500):
        await counters.redis.delete(*keys[start : start + 500])


async def test_counters_lost_mid_run_are_rebuilt_to_the_same_totals_without_false_corrections(
    metering_schema: Servers, datacenter: Datacenter, prefix: str, counters: Counters
) -> None:
    project, budget = uuid.uuid4(), uuid.uuid4()
    instances = [uuid.uuid4() for _ in range(10)]
    h3 = hours_ago(3)

    def minute_ticks(first: int, count: int, start: datetime) -> list[UsageTick]:
        return [
            datacenter.tick(
                "h1",
                [
                    sample(
                        i,
                        start + timedelta(minutes=m),
                        60,
                        project_id=project,
                        budget_code_id=budget,
                        cpu_time_ns=7,
                    )
                    for i in instances
                ],
                tick_id=f"{datacenter.name}/h1/{start}/{m}",
            )
            for m in range(first, first + count)
        ]

    def ours(event: UsageRecorded) -> bool:
        # the shared stream also holds other tests' ticks, which a rebuild counts too and may
        # rightly correct (their rollups were made while their ticks still came in): only this
        # project's hours are known to come back unchanged
        return event.project_id == project

    before_loss = minute_ticks(0, 90, h3)  # hours -3 and -2
    after_loss = minute_ticks(0, 5, hours_ago(0))  # the open hour
    async with (
        StreamWatch(datacenter.nc, "METERING", "metering.usage.recorded") as recorded,
        running_metering(
            metering_schema, prefix, rollup_interval_s=0.2, rollup_lateness_s=10**6
        ) as (_, deps),
    ):
        for tick in before_loss:
            await datacenter.send(tick)
        await wait_drained(datacenter.nc)
        # every tick is in: now the hours may close (closing while ticks of an hour are still
        # coming in would rightly publish corrections, which this test is not about)
        deps.settings.rollup_lateness_s = 0
        first = await recorded.wait_settled(UsageRecorded, where=ours, count=20, settle_s=1.0)
        assert {e.revision for e in first} == {1}

        await _wipe(counters, prefix)  # Redis lost everything
        for tick in after_loss:
            await datacenter.send(tick)
        # and a tick from before the loss delivered again: counted once, by the rebuild
        await datacenter.send(before_loss[0], msg_id=str(uuid.uuid4()))
        await wait_drained(datacenter.nc)
        await asyncio.sleep(0.6)  # rollup rounds: the loss must not look like a correction
        assert (await counters.total("p", project)).running_us == 10 * 6 * 60 * US
        assert not await recorded.matching(
            UsageRecorded, where=lambda e: ours(e) and e.revision > 1
        )

        with pytest.raises(Invalid):
            await rebuild(deps, datacenter.nc, hours_ago(24 * 400))
        again = await rebuild(deps, datacenter.nc, h3)
        # every tick lost but the one delivered again; the stream also holds other tests' ticks
        assert again >= 89

        total = await counters.total("p", project)
        assert total.running_us == 10 * 95 * 60 * US
        assert total.cpu_ns == 10 * 95 * 7
        for instance in instances:
            assert (await counters.total("i", instance)).running_us == 95 * 60 * US
        await asyncio.sleep(0.6)
        assert not await recorded.matching(
            UsageRecorded, where=lambda e: ours(e) and e.revision > 1
        ), "the rebuilt hours came back unchanged: nothing to correct"


async def test_rebuild_runs_from_the_command_line(
    metering_schema: Servers, datacenter: Datacenter, prefix: str, counters: Counters
) -> None:
    project, budget = uuid.uuid4(), uuid.uuid4()
    instance = uuid.uuid4()
    tick = datacenter.tick(
        "h1", [sample(instance, hours_ago(1), 42, project_id=project, budget_code_id=budget)]
    )
    async with running_metering(metering_schema, prefix):
        await datacenter.send(tick)
        await wait_drained(datacenter.nc)
    await _wipe(counters, prefix)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "compgrid_metering", "rebuild", "--since", hours_ago(2).isoformat()],
        env=metering_environment(metering_schema, prefix),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "counted again" in done.stdout

    async def restored() -> bool:
        return (await counters.total("i", instance)).running_us == 42 * US

    await wait_until(restored, 5, "the lost tick counted again")
    assert await counters.intact()
