"""Usage ticks from simulated (``test:///``) hosts: contiguous intervals that add up to exactly
the running time, nothing for stopped instances, and samples that carry the instance."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from uuid import UUID

import asyncpg

from compgrid_events.provisioner import (
    InstanceStarted,
    InstanceStopped,
    InstanceUsage,
    UsageTick,
)
from tests.harness.servers import Servers
from tests.provisioner.integration.conftest import Datacenter, running_worker
from tests.runtime.integration.waiting import wait_until

GPU_LABELS = {"gpu.pci.a100": "0000:81:00.0,0000:82:00.0"}


# Helpers -------------------------------------------------------------------------------------


async def _host_known(real: Servers, datacenter: str, name: str) -> None:
    """Wait until the worker has taken in the host's announcement (its GPU labels)."""
    dsn = real.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)

    async def known() -> bool:
        conn = await asyncpg.connect(dsn)
        try:
            return bool(
                await conn.fetchval(
                    "SELECT count(*) FROM provisioner.host WHERE datacenter = $1 AND name = $2",
                    datacenter,
                    name,
                )
            )
        finally:
            await conn.close()

    await wait_until(known, 15, f"host {name} known to the provisioner")


async def _samples(dc: Datacenter, instance_id: UUID) -> list[tuple[UsageTick, InstanceUsage]]:
    """Every sample sent for an instance with the tick carrying it, in interval order."""
    found = [
        (tick, sample)
        for tick in await dc.ticks()
        for sample in tick.samples
        if sample.instance_id == instance_id
    ]
    return sorted(found, key=lambda pair: (pair[1].started_at, pair[1].ended_at))


async def _closed_at(dc: Datacenter, instance_id: UUID, at: datetime) -> None:
    """Wait until the interval closed by a stop (ending at ``at``) has arrived."""

    async def arrived() -> bool:
        return any(s.ended_at == at for _, s in await _samples(dc, instance_id))

    await wait_until(arrived, 10, f"the interval of {instance_id} ending at {at}")


def _assert_contiguous(samples: list[InstanceUsage]) -> None:
    for before, after in itertools.pairwise(samples):
        assert before.ended_at == after.started_at, (
            f"gap or overlap: {before.started_at}..{before.ended_at} then "
            f"{after.started_at}..{after.ended_at}"
        )


def _assert_cpu_bounded(samples: list[InstanceUsage]) -> None:
    for s in samples:
        seconds = (s.ended_at - s.started_at).total_seconds()
        assert 0 <= s.cpu_time_ns <= seconds * s.vcpus * 1e9, (
            f"{s.cpu_time_ns} ns of CPU in {seconds} s with {s.vcpus} vCPUs"
        )


def _total(samples: list[InstanceUsage]) -> timedelta:
    return sum((s.ended_at - s.started_at for s in samples), timedelta())


# Tests ---------------------------------------------------------------------------------------


async def test_intervals_are_contiguous_and_add_up_to_exactly_the_running_time(
    provisioner_schema: Servers,
    datacenter: Datacenter,
    simulated_hosts: Callable[..., dict[str, str]],
) -> None:
    name, uri = next(iter(simulated_hosts(1).items()))
    await datacenter.add_host(name, uri)
    results = datacenter.results
    assert results is not None
    async with running_worker(provisioner_schema, datacenter.name):
        create = datacenter.schedule(name, vcpus=2, memory_mib=64)
        iid = create.instance_id
        await datacenter.publish(create)
        started = await results.wait_for(InstanceStarted, str(iid))
        await asyncio.sleep(1.0)
        # a reboot keeps it running and metered throughout
        await datacenter.publish(datacenter.reboot(iid))
        await results.wait_for(InstanceStarted, str(iid), count=2)
        await asyncio.sleep(1.0)
        await datacenter.publish(datacenter.stop(iid))
        stopped = await results.wait_for(InstanceStopped, str(iid))
        await _closed_at(datacenter, iid, stopped.stopped_at)

        first_run = [s for _, s in await _samples(datacenter, iid)]
        assert len(first_run) >= 3, f"only {len(first_run)} intervals in ~2 s of 0.3 s ticks"
        assert first_run[0].started_at == started.started_at
        assert first_run[-1].ended_at == stopped.stopped_at
        _assert_contiguous(first_run)
        assert _total(first_run) == stopped.stopped_at - started.started_at
        _assert_cpu_bounded(first_run)

        # stopped for a while: nothing is metered for that time
        await asyncio.sleep(1.2)
        assert [s for _, s in await _samples(datacenter, iid)] == first_run

        # started again: a second run, metered on its own from its start to its stop
        await datacenter.publish(datacenter.start(iid))
        restarted = await results.wait_for(
            InstanceStarted, str(iid), where=lambda e: e.started_at > stopped.stopped_at
        )
        await asyncio.sleep(1.0)
        await datacenter.publish(datacenter.stop(iid))
        stopped_again = await results.wait_for(InstanceStopped, str(iid), count=2)
        await _closed_at(datacenter, iid, stopped_again.stopped_at)

        every = [s for _, s in await _samples(datacenter, iid)]
        second_run = every[len(first_run) :]
        assert every[: len(first_run)] == first_run
        assert second_run, "no usage for the second run"
        assert second_run[0].started_at == restarted.started_at
        assert second_run[-1].ended_at == stopped_again.stopped_at
        _assert_contiguous(second_run)
        _assert_cpu_bounded(second_run)
        running = (stopped.stopped_at - started.started_at) + (
            stopped_again.stopped_at - restarted.started_at
        )
        assert _total(every) == running


async def test_a_stopped_instance_gets_no_ticks(
    provisioner_schema: Servers,
    datacenter: Datacenter,
    simulated_hosts: Callable[..., dict[str, str]],
) -> None:
    name, uri = next(iter(simulated_hosts(1).items()))
    await datacenter.add_host(name, uri)
    results = datacenter.results
    assert results is not None
    async with running_worker(provisioner_schema, datacenter.name):
        keeps_running = datacenter.schedule(name)
        gets_stopped = datacenter.schedule(name)
        for create in (keeps_running, gets_stopped):
            await datacenter.publish(create)
            await results.wait_for(InstanceStarted, str(create.instance_id))
        await datacenter.publish(datacenter.stop(gets_stopped.instance_id))
        stopped = await results.wait_for(InstanceStopped, str(gets_stopped.instance_id))
        await _closed_at(datacenter, gets_stopped.instance_id, stopped.stopped_at)
        ticks_then = len(await datacenter.ticks())

        # several sampling rounds later (the neighbour's ticks show they happened)
        async def rounds_passed() -> bool:
            later = [
                s
                for _, s in await _samples(datacenter, keeps_running.instance_id)
                if s.started_at >= stopped.stopped_at
            ]
            return len(later) >= 4

        await wait_until(rounds_passed, 10, "four sampling rounds after the stop")
        assert len(await datacenter.ticks()) > ticks_then
        after_stop = [
            s
            for _, s in await _samples(datacenter, gets_stopped.instance_id)
            if s.ended_at > stopped.stopped_at or s.started_at >= stopped.stopped_at
        ]
        assert after_stop == [], "a stopped instance was metered"

        # an instance stopped before any tick of this worker got one: none at all
        await datacenter.publish(datacenter.stop(keeps_running.instance_id))
        await results.wait_for(InstanceStopped, str(keeps_running.instance_id))
        never = datacenter.schedule(name)
        await datacenter.publish(never)
        await results.wait_for(InstanceStarted, str(never.instance_id))
        await datacenter.publish(datacenter.stop(never.instance_id))
        never_stopped = await results.wait_for(InstanceStopped, str(never.instance_id))
        await _closed_at(datacenter, never.instance_id, never_stopped.stopped_at)
        await asyncio.sleep(1.2)
        for _, s in await _samples(datacenter, never.instance_id):
            assert s.ended_at <= never_stopped.stopped_at


async def test_samples_carry_the_instance_and_ticks_are_unique_per_host(
    provisioner_schema: Servers,
    datacenter: Datacenter,
    simulated_hosts: Callable[..., dict[str, str]],
) -> None:
    uris = simulated_hosts(2)
    for name, uri in uris.items():
        await datacenter.add_host(name, uri, labels=GPU_LABELS)
    hosts = list(uris)
    results = datacenter.results
    assert results is not None
    async with running_worker(provisioner_schema, datacenter.name):
        for name in hosts:
            await _host_known(provisioner_schema, datacenter.name, name)
        creates = [
            datacenter.schedule(
                hosts[0], vcpus=2, memory_mib=64, gpus={"a100": 2}, project_id=uuid.uuid4()
            ),
            datacenter.schedule(hosts[0], vcpus=1, memory_mib=32),
            datacenter.schedule(hosts[1], vcpus=4, memory_mib=128, gpus={"a100": 1}),
        ]
        for create in creates:
            await datacenter.publish(create)
        for create in creates:
            await results.wait_for(InstanceStarted, str(create.instance_id))

        async def enough() -> bool:
            for create in creates:
                if len(await _samples(datacenter, create.instance_id)) < 4:
                    return False
            return True

        await wait_until(enough, 15, "four intervals of every instance")

        for create in creates:
            pairs = await _samples(datacenter, create.instance_id)
            for tick, sample in pairs:
                assert (tick.datacenter, tick.host) == (datacenter.name, create.host)
                assert sample.project_id == create.project_id
                assert sample.budget_code_id == create.budget_code_id
                assert sample.vcpus == create.resources.vcpus
                assert sample.memory_mib == create.resources.memory_mib
                assert sample.gpus == {g.model: g.count for g in create.resources.gpus}
                assert sample.ended_at >= sample.started_at
            samples = [s for _, s in pairs]
            _assert_contiguous(samples)
            _assert_cpu_bounded(samples)

        ticks = await datacenter.ticks()
        ids = [tick.tick_id for tick in ticks]
        assert len(ids) == len(set(ids)), "two ticks share a tick id"
        for tick in ticks:
            assert tick.samples, "an empty tick"
            assert tick.tick_id.startswith(f"{datacenter.name}.{tick.host}.")
            assert len({s.instance_id for s in tick.samples}) == len(tick.samples)
        # one round of one host carries all of that host's running instances together
        both = {creates[0].instance_id, creates[1].instance_id}
        assert any({s.instance_id for s in tick.samples} == both for tick in ticks)
