"""Reconcile on simulated (``test:///``) hosts: what happens to domains changed behind
CompGrid's back, orphans, and domains that are someone else's."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import libvirt

from compgrid_events.base import utc_now
from compgrid_events.inventory import InstanceScheduled
from compgrid_events.provisioner import (
    InstanceDeleted,
    InstanceFailed,
    InstanceStarted,
    InstanceStopped,
)
from compgrid_provisioner.domain.domain_xml import (
    DomainSpec,
    Meta,
    Network,
    domain_name,
    domain_xml,
    volume_names,
)
from tests.harness.servers import Servers
from tests.provisioner.integration.conftest import REAL_POOL, Datacenter, Worker, running_worker
from tests.runtime.integration.waiting import wait_until

LONG_AGO = timedelta(hours=1)


# Helpers -------------------------------------------------------------------------------------


def _dsn(real: Servers) -> str:
    return real.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _instance(real: Servers, instance_id: UUID) -> asyncpg.Record | None:
    conn = await asyncpg.connect(_dsn(real))
    try:
        return await conn.fetchrow("SELECT * FROM provisioner.instance WHERE id = $1", instance_id)
    finally:
        await conn.close()


def _domain(worker: Worker, uri: str, instance_id: UUID) -> libvirt.virDomain | None:
    try:
        return worker.hypervisor(uri).lookupByUUIDString(str(instance_id))
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def _define_behind_our_back(
    worker: Worker,
    uri: str,
    *,
    instance_id: UUID,
    datacenter: str,
    host: str,
    defined_at: datetime,
    start: bool = True,
) -> libvirt.virDomain:
    """A domain with CompGrid's metadata, defined (and started) directly on the host."""
    spec = DomainSpec(
        meta=Meta(
            instance_id=instance_id,
            project_id=uuid.uuid4(),
            budget_code_id=uuid.uuid4(),
            datacenter=datacenter,
            host=host,
            defined_at=defined_at,
        ),
        name=domain_name(instance_id),
        domain_type="test",
        vcpus=1,
        memory_mib=32,
        network=Network("none"),
    )
    dom = worker.hypervisor(uri).defineXML(domain_xml(spec))
    if start:
        dom.create()
    return dom


def _foreign_domain(worker: Worker, uri: str) -> libvirt.virDomain:
    """A domain that is not CompGrid's at all (no metadata)."""
    name = f"someone-else-{uuid.uuid4().hex[:8]}"
    dom = worker.hypervisor(uri).defineXML(
        f"<domain type='test'><name>{name}</name><memory unit='MiB'>32</memory>"
        "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>"
    )
    dom.create()
    return dom


async def _gone(worker: Worker, uri: str, instance_id: UUID, timeout_s: float = 15) -> None:
    async def gone() -> bool:
        return _domain(worker, uri, instance_id) is None

    await wait_until(gone, timeout_s, f"domain {instance_id} removed")


async def _running(
    dc: Datacenter, simulated_hosts: Callable[..., dict[str, str]]
) -> tuple[str, str, InstanceScheduled]:
    """One host announced and a create for it (not yet published)."""
    name, uri = next(iter(simulated_hosts(1).items()))
    await dc.add_host(name, uri)
    return name, uri, dc.schedule(name, vcpus=2, memory_mib=64)


# Domains changed behind CompGrid's back ------------------------------------------------------


async def test_a_domain_destroyed_behind_our_back_is_reported_stopped_on_its_own(
    provisioner_schema: Servers,
    datacenter: Datacenter,
    simulated_hosts: Callable[..., dict[str, str]],
) -> None:
    _name, uri, create = await _running(datacenter, simulated_hosts)
    results = datacenter.results
    assert results is not None
    async with running_worker(provisioner_schema, datacenter.name) as worker:
        await datacenter.publish(create)
        started = await results.wait_for(InstanceStarted, str(create.instance_id))
        dom = _domain(worker, uri, create.instance_id)
        assert dom is not None
        dom.destroy()

        stopped = await results.wait_for(InstanceStopped, str(create.instance_id))
        assert stopped.command_event_id is None
        assert "stopped on its own" in stopped.reason
        assert not await results.matching(InstanceFailed, str(create.instance_id))
        assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF  # left as it is, not removed
        row = await _instance(provisioner_schema, create.instance_id)
        assert row is not None
        assert (row["observed"], row["metered_from"]) == ("stopped", None)
        assert "stopped on its own" in row["reason"]

        # metered up to when it was found stopped, not beyond
        async def closed() -> bool:
            intervals = await datacenter.intervals(create.instance_id)
            return bool(intervals) and intervals[-1][1] == stopped.stopped_at

        await wait_until(closed, 10, "last interval closed at the stop")
        intervals = await datacenter.intervals(create.instance_id)
        assert intervals[0][0] == started.started_at
        # reported once, not on every round after
        await asyncio.sleep(1.0)
        assert len(await results.matching(InstanceStopped, str(create.instance_id))) == 1


async def test_a_domain_undefined_behind_our_back_is_reported_failed(
    provisioner_schema: Servers,
    datacenter: Datacenter,
    simulated_hosts: Callable[..., dict[str, str]],
) -> None:
    _name, uri, create = await _running(datacenter, simulated_hosts)
    results = datacenter.results
    assert results is not None
    async with running_worker(provisioner_schema, datacenter.name) as worker:
        await datacenter.publish(create)
        await results.wait_for(InstanceStarted, str(create.instance_id))
        dom = _domain(worker, uri, create.instance_id)
        assert dom is not None
        dom.destroy()
        dom.undefine()

        failed = await results.wait_for(InstanceFailed, str(create.instance_id))
        assert failed.command_event_id is None
        assert "disappeared" in failed.reason
        assert not await results.matching(InstanceStopped, str(create.instance_id))
        row = await _instance(provisioner_schema, create.instance_id)
        assert row is not None
        assert (row["observed"], row["metered_from"]) == ("failed", None)
        await asyncio.sleep(1.0)
        assert len(await results.matching(InstanceFailed, str(create.instance_id))) == 1
        assert _domain(worker, uri, create.instance_id) is None


async def test_a_stopped_instance_found_running_is_adopted(
    provisioner_schema: Servers,
    datacenter: Datacenter,
    simulated_hosts: Callable[..., dict[str, str]],
) -> None:
    _name, uri, create = await _running(datacenter, simulated_hosts)
    results = datacenter.results
    assert results is not None
    async with running_worker(provisioner_schema, datacenter.name) as worker:
        await datacenter.publish(create)
        await results.wait_for(InstanceStarted, str(create.instance_id))
        await datacenter.publish(datacenter.stop(create.instance_id))
        stopped = await results.wait_for(InstanceStopped, str(create.instance_id))
        dom = _domain(worker, uri, create.instance_id)
        assert dom is not None
        assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
        dom.create()

        adopted = await results.wait_for(InstanceStarted, str(create.instance_id), count=2)
        assert adopted.command_event_id is None
        assert adopted.domain_uuid == create.instance_id
        assert adopted.started_at > stopped.stopped_at
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING  # adopted, not shut down again
        row = await _instance(provisioner_schema, create.instance_id)
        assert row is not None
        assert row["observed"] == "running"
        assert row["metered_from"] is not None

        # and metered again from the adoption on
        async def metered() -> bool:
            return any(
                began == adopted.started_at
                for began, _, _ in await datacenter.intervals(create.instance_id)
            )

        await wait_until(metered, 10, "usage from the adoption on")
        intervals = await datacenter.intervals(create.instance_id)
        assert not any(
            stopped.stopped_at < ended <= adopted.started_at for _, ended, _ in intervals
        )
        await asyncio.sleep(1.0)
        assert len(await results.matching(InstanceStarted, str(create.instance_id))) == 2


# Domains nobody here knows -------------------------------------------------------------------


async def test_orphans_are_removed_after_their_grace_and_other_domains_are_left_alone(
    provisioner_schema: Servers,
    datacenter: Datacenter,
    simulated_hosts: Callable[..., dict[str, str]],
) -> None:
    name, uri = next(iter(simulated_hosts(1).items()))
    await datacenter.add_host(name, uri)
    results = datacenter.results
    assert results is not None
    grace_s = 4.0
    async with running_worker(
        provisioner_schema, datacenter.name, orphan_grace_s=grace_s, command_ack_wait_s=grace_s / 2
    ) as worker:
        # one instance of ours, so that the host is known and watched
        known = datacenter.schedule(name)
        await datacenter.publish(known)
        await results.wait_for(InstanceStarted, str(known.instance_id))

        now = utc_now()
        old_orphan, new_orphan = uuid.uuid4(), uuid.uuid4()
        stopped_orphan = uuid.uuid4()
        _define_behind_our_back(
            worker,
            uri,
            instance_id=old_orphan,
            datacenter=datacenter.name,
            host=name,
            defined_at=now - LONG_AGO,
        )
        _define_behind_our_back(
            worker,
            uri,
            instance_id=stopped_orphan,
            datacenter=datacenter.name,
            host=name,
            defined_at=now - LONG_AGO,
            start=False,
        )
        _define_behind_our_back(
            worker,
            uri,
            instance_id=new_orphan,
            datacenter=datacenter.name,
            host=name,
            defined_at=now,
        )
        # the old orphan's volumes, as a crashed create would have left them
        pool = worker.hypervisor(uri).storagePoolLookupByName(REAL_POOL)
        for volume in volume_names(old_orphan):
            pool.createXML(
                f"<volume><name>{volume}</name><capacity unit='MiB'>1</capacity>"
                "<target><format type='raw'/></target></volume>"
            )
        # not ours to remove: ours by metadata but of another host, or of another
        # datacenter, and a domain without CompGrid's metadata
        other_host = uuid.uuid4()
        other_dc = uuid.uuid4()
        _define_behind_our_back(
            worker,
            uri,
            instance_id=other_host,
            datacenter=datacenter.name,
            host=f"{name}-elsewhere",
            defined_at=now - LONG_AGO,
        )
        _define_behind_our_back(
            worker,
            uri,
            instance_id=other_dc,
            datacenter=f"{datacenter.name}-other",
            host=name,
            defined_at=now - LONG_AGO,
        )
        foreign = _foreign_domain(worker, uri)

        await _gone(worker, uri, old_orphan, timeout_s=grace_s)
        await _gone(worker, uri, stopped_orphan, timeout_s=5)
        assert not set(volume_names(old_orphan)) & set(pool.listVolumes())
        # the young orphan survives its grace period...
        young = _domain(worker, uri, new_orphan)
        assert young is not None, "an orphan was removed before its grace period"
        assert (utc_now() - now).total_seconds() < grace_s
        # ...and goes after it
        await _gone(worker, uri, new_orphan, timeout_s=grace_s + 10)
        assert (utc_now() - now).total_seconds() >= grace_s

        # several more reconcile rounds: the others are all still there, untouched
        await asyncio.sleep(1.5)
        for kept in (other_host, other_dc):
            dom = _domain(worker, uri, kept)
            assert dom is not None, f"domain {kept} (not this host's) was removed"
            assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert foreign.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert _domain(worker, uri, known.instance_id) is not None
        # orphans are nobody's instances: nothing is reported about them
        for orphan in (old_orphan, new_orphan, stopped_orphan, other_host, other_dc):
            assert await results.about(str(orphan)) == []
            assert await _instance(provisioner_schema, orphan) is None


async def test_a_domain_left_behind_by_a_deleted_instance_is_removed(
    provisioner_schema: Servers,
    datacenter: Datacenter,
    simulated_hosts: Callable[..., dict[str, str]],
) -> None:
    name, uri, create = await _running(datacenter, simulated_hosts)
    results = datacenter.results
    assert results is not None
    # a grace far beyond the test: only the instance's row can say the domain must go
    async with running_worker(provisioner_schema, datacenter.name, orphan_grace_s=3600) as worker:
        await datacenter.publish(create)
        await results.wait_for(InstanceStarted, str(create.instance_id))
        await datacenter.publish(datacenter.delete(create.instance_id))
        await results.wait_for(InstanceDeleted, str(create.instance_id))
        assert _domain(worker, uri, create.instance_id) is None
        # the domain is back (say a delete raced a host that replayed its config)
        _define_behind_our_back(
            worker,
            uri,
            instance_id=create.instance_id,
            datacenter=datacenter.name,
            host=name,
            defined_at=utc_now(),
        )
        await _gone(worker, uri, create.instance_id)
        row: Any = await _instance(provisioner_schema, create.instance_id)
        assert row is not None
        assert row["observed"] == "deleted"
        # the leftover is removed, not adopted
        assert len(await results.matching(InstanceStarted, str(create.instance_id))) == 1
