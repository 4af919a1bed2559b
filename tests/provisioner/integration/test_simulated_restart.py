"""Simulated (``test:///``) hosts keep their domains when the worker process ends, as a real
hypervisor does: a worker stopped (SIGTERM) or killed (SIGKILL) and started again finds its
running and stopped domains as they were, fails nothing, and meters on without a gap."""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from compgrid_events.provisioner import InstanceFailed, InstanceStarted, InstanceStopped
from tests.harness.servers import Servers
from tests.provisioner.integration.conftest import Datacenter, spawn_worker
from tests.runtime.integration.waiting import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.libvirt]


def tail(log: Path) -> str:
    """The end of the worker's output, to show with a failure."""
    return log.read_text()[-2000:]


async def ended(worker: subprocess.Popen[bytes], how: signal.Signals, log: Path) -> None:
    """Stop (SIGTERM) or kill (SIGKILL) a worker process and wait until it is gone."""
    worker.send_signal(how)
    code = await asyncio.wait_for(asyncio.to_thread(worker.wait), 60)
    expected = 0 if how is signal.SIGTERM else -signal.SIGKILL
    assert code == expected, tail(log)


async def observed(real: Servers, datacenter: str) -> dict[str, str]:
    """What the worker's records say of each instance of the datacenter."""
    db = await asyncpg.connect(real.database_url)
    try:
        rows = await db.fetch(
            "SELECT id, observed FROM provisioner.instance WHERE datacenter = $1", datacenter
        )
    finally:
        await db.close()
    return {str(r["id"]): r["observed"] for r in rows}


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
async def test_a_restarted_worker_finds_its_simulated_domains_and_meters_on_without_a_gap(
    provisioner_schema: Servers,
    datacenter: Datacenter,
    simulated_hosts: Callable[..., dict[str, str]],
    tmp_path: Path,
    how: signal.Signals,
) -> None:
    dc = datacenter
    assert dc.results is not None
    (name, uri), *_ = simulated_hosts(1).items()
    await dc.add_host(name, uri)
    running, stopped = dc.schedule(name), dc.schedule(name)
    log = tmp_path / "worker.log"
    worker = spawn_worker(provisioner_schema, dc.name, log)
    try:
        for create in (running, stopped):
            await dc.publish(create)
        # a process of its own starts slowly on a busy machine
        started = await dc.results.wait_for(InstanceStarted, str(running.instance_id), timeout_s=60)
        await dc.results.wait_for(InstanceStarted, str(stopped.instance_id), timeout_s=60)
        await dc.publish(dc.stop(stopped.instance_id))
        await dc.results.wait_for(InstanceStopped, str(stopped.instance_id), timeout_s=30)

        async def metered(count: int) -> bool:
            return len(await dc.intervals(running.instance_id)) >= count

        await wait_until(lambda: metered(2), 15, "intervals from the first worker")
        await ended(worker, how, log)
        before = len(await dc.intervals(running.instance_id))

        worker = spawn_worker(provisioner_schema, dc.name, log)
        # Several ticks and reconcile rounds of the new worker (ticks 0.3 s, reconcile 0.6 s).
        await wait_until(lambda: metered(before + 5), 60, "intervals from the second worker")
        assert await dc.results.matching(InstanceFailed) == [], tail(log)
        assert len(await dc.results.matching(InstanceStarted, str(stopped.instance_id))) == 1
        assert await observed(provisioner_schema, dc.name) == {
            str(running.instance_id): "running",
            str(stopped.instance_id): "stopped",
        }

        await dc.publish(dc.stop(running.instance_id))
        off = await dc.results.wait_for(InstanceStopped, str(running.instance_id), timeout_s=30)
        await ended(worker, signal.SIGTERM, log)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    intervals = await dc.intervals(running.instance_id)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(intervals)), "no gap, no overlap"
    assert intervals[0][0] == started.started_at
    assert intervals[-1][1] == off.stopped_at
