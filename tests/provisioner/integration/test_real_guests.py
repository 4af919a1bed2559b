"""Real QEMU guests under ``qemu:///system`` (software emulation): the parts that must be real.

Start, forced stop of a guest that ignores the shutdown request, CPU time sampled from a real
guest, deletion with its volumes, a guest destroyed behind CompGrid's back, metering that
continues across a worker restart, and a worker killed with SIGKILL in the middle of creates.
Guests are 32 MiB, one vCPU and have no operating system: they start in well under a second
and idle.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import libvirt
import pytest

from compgrid_events.provisioner import (
    InstanceDeleted,
    InstanceFailed,
    InstanceStarted,
    InstanceStopped,
)
from compgrid_provisioner.domain.domain_xml import NAMESPACE, read_meta
from tests.harness.servers import Servers
from tests.provisioner.integration.conftest import (
    REAL_POOL,
    REAL_POOL_PATH,
    Datacenter,
    running_worker,
    spawn_worker,
)
from tests.runtime.integration.waiting import wait_until

HOST = "qemu-local"
START_TIMEOUT_S = 60.0


def ours(conn: libvirt.virConnect, datacenter: str) -> dict[UUID, libvirt.virDomain]:
    """The domains on the real host that belong to this test's datacenter."""
    found = {}
    for dom in conn.listAllDomains():
        try:
            meta = read_meta(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE))
        except libvirt.libvirtError:
            continue
        if meta is not None and meta.datacenter == datacenter:
            found[meta.instance_id] = dom
    return found


@pytest.fixture
def conn(qemu: str, datacenter: Datacenter) -> Iterator[libvirt.virConnect]:
    """A connection of the test's own to the real host; removes the test's guests after."""
    connection = libvirt.open(qemu)
    yield connection
    for dom in ours(connection, datacenter.name).values():
        try:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        except libvirt.libvirtError:
            pass
    connection.close()


@pytest.fixture
async def real_dc(datacenter: Datacenter, qemu: str) -> Datacenter:
    """The test's datacenter with the real host announced."""
    await datacenter.add_host(HOST, qemu)
    return datacenter


def contiguous(intervals: list[tuple[object, object, int]]) -> bool:
    """Each interval ends exactly where the next begins."""
    return all(a[1] == b[0] for a, b in itertools.pairwise(intervals))


async def test_a_real_guest_runs_is_metered_is_forced_off_and_is_deleted(
    provisioner_schema: Servers, real_dc: Datacenter, conn: libvirt.virConnect
) -> None:
    dc = real_dc
    assert dc.results is not None
    async with running_worker(provisioner_schema, dc.name):
        create = dc.schedule(HOST)
        await dc.publish(create)
        started = await dc.results.wait_for(
            InstanceStarted, str(create.instance_id), timeout_s=START_TIMEOUT_S
        )
        dom = conn.lookupByUUIDString(str(create.instance_id))
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert "type='qemu'" in dom.XMLDesc() or 'type="qemu"' in dom.XMLDesc()
        meta = read_meta(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE))
        assert meta is not None
        assert (meta.project_id, meta.budget_code_id) == (create.project_id, create.budget_code_id)

        async def metered() -> bool:
            return len(await dc.intervals(create.instance_id)) >= 4

        await wait_until(metered, 20, "four usage intervals")
        # The guest has no OS: it ignores the shutdown request and is forced off after 1 s.
        await dc.publish(dc.stop(create.instance_id))
        stopped = await dc.results.wait_for(InstanceStopped, str(create.instance_id), timeout_s=30)
        assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
        await asyncio.sleep(1.0)  # a round after the stop must add nothing
        intervals = await dc.intervals(create.instance_id)
        assert contiguous(intervals)
        assert intervals[0][0] == started.started_at
        assert intervals[-1][1] == stopped.stopped_at
        total = sum(((b - a) for a, b, _ in intervals), timedelta())
        assert total == stopped.stopped_at - started.started_at
        cpu_ns = sum(cpu for _, _, cpu in intervals)
        assert cpu_ns > 0, "a real guest uses some CPU time"
        assert cpu_ns <= total.total_seconds() * 1e9

        await dc.publish(dc.delete(create.instance_id))
        await dc.results.wait_for(InstanceDeleted, str(create.instance_id), timeout_s=30)
        with pytest.raises(libvirt.libvirtError):
            conn.lookupByUUIDString(str(create.instance_id))


def _base_image() -> Path:
    """A small empty qcow2 image standing in for an operator's OS image."""
    images = Path(REAL_POOL_PATH + "-images")
    images.mkdir(parents=True, exist_ok=True)
    base = images / "base.qcow2"
    if not base.exists():
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    return base


async def test_a_disk_is_a_copy_on_write_overlay_with_a_cloud_init_seed_and_goes_with_delete(
    provisioner_schema: Servers, real_dc: Datacenter, conn: libvirt.virConnect
) -> None:
    dc = real_dc
    assert dc.results is not None
    base = _base_image()
    async with running_worker(provisioner_schema, dc.name):
        create = dc.schedule(
            HOST, disk_gib=1, image_source=str(base), ssh_public_key="ssh-ed25519 AAAAC3 test"
        )
        await dc.publish(create)
        await dc.results.wait_for(
            InstanceStarted, str(create.instance_id), timeout_s=START_TIMEOUT_S
        )
        pool = conn.storagePoolLookupByName(REAL_POOL)
        pool.refresh()
        mine = sorted(v for v in pool.listVolumes() if str(create.instance_id) in v)
        assert mine == [
            f"compgrid-{create.instance_id}-disk.qcow2",
            f"compgrid-{create.instance_id}-seed.iso",
        ]
        disk = pool.storageVolLookupByName(mine[0])
        assert str(base) in disk.XMLDesc(), "the disk is backed by the image"
        assert disk.info()[1] == 1024**3, "the overlay has the type's disk size"
        seed = pool.storageVolLookupByName(mine[1])
        assert seed.info()[2] > 0, "the seed holds data"
        xml = conn.lookupByUUIDString(str(create.instance_id)).XMLDesc()
        assert disk.path() in xml
        assert seed.path() in xml

        await dc.publish(dc.delete(create.instance_id))
        await dc.results.wait_for(InstanceDeleted, str(create.instance_id), timeout_s=30)
        pool.refresh()
        assert not [v for v in pool.listVolumes() if str(create.instance_id) in v]


async def test_a_guest_destroyed_behind_compgrids_back_is_reported_stopped(
    provisioner_schema: Servers, real_dc: Datacenter, conn: libvirt.virConnect
) -> None:
    dc = real_dc
    assert dc.results is not None
    async with running_worker(provisioner_schema, dc.name):
        create = dc.schedule(HOST)
        await dc.publish(create)
        await dc.results.wait_for(
            InstanceStarted, str(create.instance_id), timeout_s=START_TIMEOUT_S
        )
        conn.lookupByUUIDString(str(create.instance_id)).destroy()
        stopped = await dc.results.wait_for(InstanceStopped, str(create.instance_id), timeout_s=15)
        assert "not through CompGrid" in stopped.reason
        assert stopped.command_event_id is None


async def test_metering_continues_without_gap_or_overlap_across_a_worker_restart(
    provisioner_schema: Servers, real_dc: Datacenter, conn: libvirt.virConnect
) -> None:
    dc = real_dc
    assert dc.results is not None
    create = dc.schedule(HOST)
    async with running_worker(provisioner_schema, dc.name):
        await dc.publish(create)
        started = await dc.results.wait_for(
            InstanceStarted, str(create.instance_id), timeout_s=START_TIMEOUT_S
        )

        async def some() -> bool:
            return len(await dc.intervals(create.instance_id)) >= 2

        await wait_until(some, 15, "intervals from the first worker")
    before = len(await dc.intervals(create.instance_id))
    await asyncio.sleep(1.0)  # no worker: the guest keeps running, unobserved
    async with running_worker(provisioner_schema, dc.name):

        async def more() -> bool:
            return len(await dc.intervals(create.instance_id)) >= before + 2

        await wait_until(more, 15, "intervals from the second worker")
        await dc.publish(dc.stop(create.instance_id))
        stopped = await dc.results.wait_for(InstanceStopped, str(create.instance_id), timeout_s=30)
    intervals = await dc.intervals(create.instance_id)
    assert contiguous(intervals), "the second worker goes on where the first left off"
    assert intervals[0][0] == started.started_at
    assert intervals[-1][1] == stopped.stopped_at
    assert len(conn.listAllDomains()) >= 1


async def test_a_worker_killed_in_the_middle_of_creates_leaves_each_instance_running_once(
    provisioner_schema: Servers,
    real_dc: Datacenter,
    conn: libvirt.virConnect,
    tmp_path: Path,
) -> None:
    dc = real_dc
    assert dc.results is not None
    creates = [dc.schedule(HOST) for _ in range(5)]
    log = tmp_path / "worker.log"
    # The worker kills itself (SIGKILL) right after starting its third guest, before that
    # create is committed or acknowledged; creates run side by side, so others may be anywhere
    # between their row and their report.
    doomed = spawn_worker(
        provisioner_schema,
        dc.name,
        log,
        COMPGRID_FAULT_POINT="provisioner.after_start",
        COMPGRID_FAULT_AFTER="2",
    )
    try:
        for create in creates:
            await dc.publish(create)
        await asyncio.wait_for(asyncio.to_thread(doomed.wait), 60)
        assert doomed.returncode == -signal.SIGKILL, log.read_text()[-2000:]
        assert len(ours(conn, dc.name)) >= 3, "three guests were started before the kill"
        assert len(await dc.results.matching(InstanceStarted)) < 5
        survivor = spawn_worker(provisioner_schema, dc.name, log)
        try:
            for create in creates:
                await dc.results.wait_for(
                    InstanceStarted, str(create.instance_id), timeout_s=START_TIMEOUT_S
                )
            await asyncio.sleep(2.0)  # a few reconcile rounds: nothing is removed or doubled
            for create in creates:
                reports = await dc.results.matching(InstanceStarted, str(create.instance_id))
                assert len(reports) == 1, f"{create.instance_id} reported started {len(reports)}x"
            domains = ours(conn, dc.name)
            assert set(domains) == {c.instance_id for c in creates}
            assert all(d.state()[0] == libvirt.VIR_DOMAIN_RUNNING for d in domains.values())
            db = await asyncpg.connect(provisioner_schema.database_url)
            try:
                rows = await db.fetch(
                    "SELECT observed FROM provisioner.instance WHERE datacenter = $1", dc.name
                )
            finally:
                await db.close()
            assert sorted(r["observed"] for r in rows) == ["running"] * 5
        finally:
            survivor.send_signal(signal.SIGTERM)
            await asyncio.wait_for(asyncio.to_thread(survivor.wait), 30)
        assert survivor.returncode == 0, log.read_text()[-2000:]
    finally:
        if doomed.poll() is None:
            os.kill(doomed.pid, signal.SIGKILL)


async def test_a_libvirt_error_mid_create_fails_the_instance_and_leaves_nothing_behind(
    provisioner_schema: Servers, real_dc: Datacenter, conn: libvirt.virConnect
) -> None:
    """The disk and seed are made and the domain defined, then the start fails (its network
    does not exist): the instance fails with libvirt's reason and nothing of it stays."""
    dc = real_dc
    assert dc.results is not None
    base = _base_image()
    async with running_worker(provisioner_schema, dc.name, network="network:compgrid-missing"):
        create = dc.schedule(
            HOST, disk_gib=1, image_source=str(base), ssh_public_key="ssh-ed25519 AAAAC3 test"
        )
        await dc.publish(create)
        failed = await dc.results.wait_for(
            InstanceFailed, str(create.instance_id), timeout_s=START_TIMEOUT_S
        )
        assert "compgrid-missing" in failed.reason, failed.reason
        assert failed.command_event_id == create.event_id
        assert str(create.instance_id) not in {d.UUIDString() for d in conn.listAllDomains()}
        pool = conn.storagePoolLookupByName(REAL_POOL)
        pool.refresh()
        assert not [v for v in pool.listVolumes() if str(create.instance_id) in v]
        await asyncio.sleep(1.0)  # reconcile rounds: a failed instance is not retried
        assert not await dc.results.matching(InstanceStarted, str(create.instance_id))


async def test_two_workers_of_one_datacenter_share_its_commands_and_act_once_per_instance(
    provisioner_schema: Servers, real_dc: Datacenter, conn: libvirt.virConnect
) -> None:
    dc = real_dc
    assert dc.results is not None
    creates = [dc.schedule(HOST) for _ in range(6)]
    async with (
        running_worker(provisioner_schema, dc.name) as first,
        running_worker(provisioner_schema, dc.name) as second,
    ):
        # Both bind the same durable consumer, and JetStream shares the commands out; count
        # the guests each worker defines on the host.
        defined = {"first": 0, "second": 0}
        for worker, name in ((first, "first"), (second, "second")):
            hypervisor = worker.deps.hosts.hypervisor(dc.hosts[HOST])
            define = hypervisor.define_and_start

            def counting(spec: Any, name: str = name, define: Any = define) -> Any:
                defined[name] += 1
                return define(spec)

            hypervisor.define_and_start = counting  # type: ignore[method-assign]
        for create in creates:
            await dc.publish(create)
        for create in creates:
            await dc.results.wait_for(
                InstanceStarted, str(create.instance_id), timeout_s=START_TIMEOUT_S
            )

        async def metered() -> bool:
            counts = [len(await dc.intervals(c.instance_id)) for c in creates]
            return min(counts) >= 3

        await wait_until(metered, 20, "usage from both workers")
        for create in creates:
            await dc.publish(dc.stop(create.instance_id))
        for create in creates:
            await dc.results.wait_for(InstanceStopped, str(create.instance_id), timeout_s=30)
        await asyncio.sleep(1.0)
    assert sum(defined.values()) == len(creates), f"each guest defined once: {defined}"
    assert set(ours(conn, dc.name)) == {c.instance_id for c in creates}
    for create in creates:
        assert len(await dc.results.matching(InstanceStarted, str(create.instance_id))) == 1
        assert len(await dc.results.matching(InstanceStopped, str(create.instance_id))) == 1
        intervals = await dc.intervals(create.instance_id)
        # both workers tick the host, one at a time: never the same seconds twice
        assert contiguous(intervals), f"{create.instance_id}: gap or overlap in {intervals}"
