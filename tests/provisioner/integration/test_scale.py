"""Scale on simulated hosts: 200 instances created, metered and deleted by one worker."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import libvirt

from compgrid_events.provisioner import InstanceDeleted, InstanceStarted
from compgrid_provisioner.domain.domain_xml import NAMESPACE, read_meta
from tests.harness.servers import Servers
from tests.provisioner.integration.conftest import Datacenter, running_worker
from tests.runtime.integration.waiting import wait_until

INSTANCES = 200
HOSTS = 4


async def test_two_hundred_instances_on_four_hosts_run_once_each_are_metered_and_deleted(
    provisioner_schema: Servers,
    datacenter: Datacenter,
    simulated_hosts: Callable[..., dict[str, str]],
) -> None:
    results = datacenter.results
    assert results is not None
    hosts = simulated_hosts(HOSTS)
    for name, uri in hosts.items():
        await datacenter.add_host(name, uri)
    names = sorted(hosts)
    creates = [datacenter.schedule(names[i % HOSTS]) for i in range(INSTANCES)]
    async with running_worker(provisioner_schema, datacenter.name) as worker:
        began = time.monotonic()
        for create in creates:
            await datacenter.publish(create)

        async def all_started() -> bool:
            await datacenter.ticks()  # read meanwhile: an idle watch's consumer goes away
            return len(await results.matching(InstanceStarted)) >= INSTANCES

        await wait_until(all_started, 120, f"{INSTANCES} instances started")
        elapsed = time.monotonic() - began
        started = await results.matching(InstanceStarted)
        assert Counter(e.instance_id for e in started) == Counter(
            {c.instance_id: 1 for c in creates}
        ), "each instance reported started exactly once"
        by_host: Counter[str] = Counter()
        for name, uri in hosts.items():
            for dom in worker.hypervisor(uri).listAllDomains():
                meta = read_meta(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE))
                assert meta is not None
                assert meta.host == name
                assert dom.isActive()
                by_host[name] += 1
        assert by_host == Counter(dict.fromkeys(names, INSTANCES // HOSTS))

        async def all_metered() -> bool:
            ticks = await datacenter.ticks()
            seen = {s.instance_id for t in ticks for s in t.samples}
            return seen >= {c.instance_id for c in creates}

        await wait_until(all_metered, 30, "usage for every instance")
        ticks = await datacenter.ticks()
        assert {t.host for t in ticks} == set(names)
        assert len({t.tick_id for t in ticks}) == len(ticks), "tick ids are unique"

        for create in creates:
            await datacenter.publish(datacenter.delete(create.instance_id))

        async def all_deleted() -> bool:
            return len(await results.matching(InstanceDeleted)) >= INSTANCES

        await wait_until(all_deleted, 120, f"{INSTANCES} instances deleted")
        for uri in hosts.values():
            assert worker.hypervisor(uri).listAllDomains() == []
    # One worker, sixteen commands at a time: far quicker than one after another.
    assert elapsed < 60, f"{INSTANCES} creates took {elapsed:.1f} s"
