"""Create, stop, start, reboot and delete on simulated (``test:///``) hosts."""

from __future__ import annotations

from collections.abc import Callable

import libvirt

from compgrid_events.provisioner import (
    InstanceDeleted,
    InstanceStarted,
    InstanceStopped,
)
from tests.harness.servers import Servers
from tests.provisioner.integration.conftest import Datacenter, running_worker


async def test_an_instance_goes_through_its_whole_life_on_a_simulated_host(
    provisioner_schema: Servers,
    datacenter: Datacenter,
    simulated_hosts: Callable[..., dict[str, str]],
) -> None:
    uris = simulated_hosts(1)
    name, uri = next(iter(uris.items()))
    await datacenter.add_host(name, uri)
    results = datacenter.results
    assert results is not None
    async with running_worker(provisioner_schema, datacenter.name) as worker:
        create = datacenter.schedule(name, vcpus=2, memory_mib=2048)
        await datacenter.publish(create)
        started = await results.wait_for(InstanceStarted, str(create.instance_id))
        assert started.domain_uuid == create.instance_id
        assert started.command_event_id == create.event_id
        conn = worker.hypervisor(uri)
        dom = conn.lookupByUUIDString(str(create.instance_id))
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert dom.info()[3] == 2

        await datacenter.publish(datacenter.stop(create.instance_id))
        await results.wait_for(InstanceStopped, str(create.instance_id))
        assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF

        await datacenter.publish(datacenter.start(create.instance_id))
        await results.wait_for(InstanceStarted, str(create.instance_id), count=2)
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING

        await datacenter.publish(datacenter.delete(create.instance_id))
        await results.wait_for(InstanceDeleted, str(create.instance_id))
        assert str(create.instance_id) not in [d.UUIDString() for d in conn.listAllDomains()]
