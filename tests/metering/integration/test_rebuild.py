"""Redis loses the counters mid-run: metering says so, rebuilds them from the usage stream by
itself to the same totals, and publishes no false correction meanwhile."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats
import pytest

from compgrid_events.metering import UsageRecorded
from compgrid_events.provisioner import UsageTick
from compgrid_events.streams import ALL_STREAMS
from compgrid_metering.adapters.counter_sets import get_counter_set
from compgrid_metering.adapters.counters import Counters
from compgrid_metering.use_cases.deps import Deps
from compgrid_metering.use_cases.rebuild import rebuild
from compgrid_metering.use_cases.rollups import close_hours
from compgrid_runtime.embedded import EmbeddedNats
from compgrid_runtime.errors import Conflict, Invalid
from compgrid_runtime.rpc import call
from compgrid_runtime.streams import ensure_streams
from tests.harness.auth import AuthHarness
from tests.harness.servers import Servers
from tests.harness.streams import StreamWatch
from tests.metering.integration.conftest import (
    Datacenter,
    hours_ago,
    let_rebuild,
    lose_counters,
    metering_environment,
    running_metering,
    sample,
    wait_drained,
)
from tests.runtime.integration.waiting import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis]

US = 1_000_000
ROUNDS_S = 1.0
"""Five rollup rounds of each process (0.2 s apart): long enough for a wrong one to show."""


async def _rebuilds(deps: Deps) -> int:
    async with deps.uow() as uow:
        found = await get_counter_set(uow.session, prefix=deps.settings.redis_prefix)
    assert found is not None, "metering remembered its counters at start"
    return found.rebuilds


async def _partial_rollup_left_behind(
    real: Servers, datacenter: Datacenter, prefix: str
) -> uuid.UUID:
    """An instance whose hour was rolled up after one of its two ticks; return its id."""
    instance, project, budget = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    settings = {"rollup_interval_s": 3600, "rollup_lateness_s": 10**6}
    async with running_metering(real, prefix, **settings) as (_, deps):
        for n in range(2):
            one = sample(instance, hours_ago(2), 30, project_id=project, budget_code_id=budget)
            await datacenter.send(datacenter.tick("h1", [one]))
            await wait_drained(datacenter.nc)
            if n == 0:  # one round, between the two ticks
                deps.settings.rollup_lateness_s = 0
                await close_hours(deps)
                deps.settings.rollup_lateness_s = 10**6
    return instance


async def test_counters_lost_mid_run_are_rebuilt_to_the_same_totals_without_false_corrections(
    metering_schema: Servers,
    auth: AuthHarness,
    datacenter: Datacenter,
    prefix: str,
    counters: Counters,
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

    async def usage() -> Any:
        body = {"of": "project", "id": str(project), "since": (h3 - timedelta(hours=1)).isoformat()}
        return await call(datacenter.nc, "metering", "usage.get", body, token=auth.tokens["admin"])

    def ours(event: UsageRecorded) -> bool:
        # the shared stream also holds other tests' ticks, which a rebuild counts too and may
        # rightly correct (their rollups were made while their ticks still came in): only this
        # project's hours are known to come back unchanged
        return event.project_id == project

    before_loss = minute_ticks(0, 90, h3)  # hours -3 and -2
    after_loss = minute_ticks(0, 5, hours_ago(0))  # the open hour
    settings = {"rollup_interval_s": 0.2, "rollup_lateness_s": 10**6}
    # as tests before this one may: another deployment closes an hour while its ticks are still
    # coming in, and stops; the rebuild below counts that hour whole
    foreign = await _partial_rollup_left_behind(metering_schema, datacenter, f"{prefix}x:")
    async with (
        StreamWatch(datacenter.nc, "METERING", "metering.usage.recorded") as recorded,
        running_metering(metering_schema, prefix, **settings) as (one, deps),
        running_metering(metering_schema, prefix, **settings) as (_, other),
    ):
        await asyncio.wait_for(one.keys.ready.wait(), 10)
        for tick in before_loss:
            await datacenter.send(tick)
        await wait_drained(datacenter.nc)
        # every tick is in: now the hours may close (closing while ticks of an hour are still
        # coming in would rightly publish corrections, which this test is not about)
        deps.settings.rollup_lateness_s = other.settings.rollup_lateness_s = 0
        first = await recorded.wait_settled(UsageRecorded, where=ours, count=20, settle_s=1.0)
        assert {e.revision for e in first} == {1}
        assert (await usage())["complete"] is True

        # Redis lost everything, while (as far as metering can tell) a rebuild is under way
        await lose_counters(counters, prefix, hold_rebuild=True)
        for tick in after_loss:
            await datacenter.send(tick)
        # and a tick from before the loss delivered again: counted once, by the rebuild
        await datacenter.send(before_loss[0], msg_id=str(uuid.uuid4()))
        await wait_drained(datacenter.nc)
        lost = await usage()
        assert lost["complete"] is False, "the answer says hours may be missing"
        await asyncio.sleep(ROUNDS_S)  # the loss must not look like a correction
        assert (await counters.total("p", project)).running_us == 10 * 6 * 60 * US
        assert not await recorded.matching(
            UsageRecorded, where=lambda e: ours(e) and e.revision > 1
        )
        with pytest.raises(Invalid):
            await rebuild(deps, datacenter.nc, hours_ago(24 * 400))
        with pytest.raises(Conflict):
            await rebuild(deps, datacenter.nc, h3)  # one rebuild at a time

        await let_rebuild(counters)  # one of the two processes rebuilds now, by itself

        async def rebuilt() -> bool:
            return bool((await usage())["complete"])

        # the stream also holds every earlier test's ticks (100,000 samples in the fault tests)
        await wait_until(rebuilt, 120, "the counters rebuilt from the usage stream")
        answer = await usage()
        assert Decimal(answer["total"]["running_seconds"]) == 10 * 95 * 60
        total = await counters.total("p", project)
        assert total.running_us == 10 * 95 * 60 * US
        assert total.cpu_ns == 10 * 95 * 7
        for instance in instances:
            assert (await counters.total("i", instance)).running_us == 95 * 60 * US
        # the other deployment's partial hour, counted whole, is rightly corrected; by then the
        # hours before it are rolled up again too (hours close oldest first)
        await recorded.wait_for(
            UsageRecorded,
            where=lambda e: e.instance_id == foreign and e.revision == 2,
            timeout_s=120,
        )
        await asyncio.sleep(ROUNDS_S)  # both processes see the counters complete again
        assert await _rebuilds(deps) == 1, "rebuilt once, by one of the processes"
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
    await lose_counters(counters, prefix)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "compgrid_metering", "rebuild", "--since", hours_ago(2).isoformat()],
        env=metering_environment(metering_schema, prefix),
        capture_output=True,
        text=True,
        timeout=120,  # it replays every earlier test's ticks too
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "counted again" in done.stdout

    async def restored() -> bool:
        return (await counters.total("i", instance)).running_us == 42 * US

    await wait_until(restored, 5, "the lost tick counted again")
    assert await counters.intact()


async def test_rebuild_from_before_what_the_stream_holds_ends_with_a_clear_message(
    metering_schema: Servers, prefix: str, counters: Counters, tmp_path: Path
) -> None:
    own = EmbeddedNats(tmp_path / "nats").start()  # a stream of the test's own, to trim
    try:
        nc = await nats.connect(own.url)
        try:
            await ensure_streams(nc.jetstream(), ALL_STREAMS)
            datacenter = Datacenter("dc-trimmed", nc)
            project, budget = uuid.uuid4(), uuid.uuid4()
            for _ in range(3):
                one = sample(
                    uuid.uuid4(), hours_ago(1), 5, project_id=project, budget_code_id=budget
                )
                await datacenter.send(datacenter.tick("h1", [one]))
            await nc.jetstream().purge_stream("USAGE", keep=1)  # retention dropped the oldest
        finally:
            await nc.close()
        done = await asyncio.to_thread(
            subprocess.run,
            [
                *(sys.executable, "-m", "compgrid_metering", "rebuild"),
                *("--since", hours_ago(2).isoformat()),
            ],
            env=metering_environment(metering_schema, prefix, nats_url=own.url),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        own.stop()
    assert done.returncode == 1, done.stdout + done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    message = done.stderr.strip()
    assert message.startswith("compgrid-metering rebuild: cannot rebuild from"), message
    assert "the usage stream holds ticks published from" in message
    assert "or later" in message
    assert len(message.splitlines()) == 1
