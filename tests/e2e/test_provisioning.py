"""A researcher's request all the way down and back: the inventory places it and commands the
datacenter's provisioner, the worker makes (or fails to make) the domain on a simulated libvirt
host, and its report moves the instance, the host claim and the budget hold in the inventory."""

from __future__ import annotations

import uuid

import asyncpg
import libvirt
import pytest

from compgrid_events.provisioner import HostUnreachable
from tests.e2e.conftest import (
    HOSTS,
    StackFactory,
    hold_count,
    hostdev_addresses,
    meta_of,
    power,
)
from tests.harness.servers import Servers
from tests.harness.streams import StreamWatch
from tests.inventory.integration.conftest import (
    LAB_GPU_LABELS,
    InventoryHarness,
    claim_count,
    make_lab,
    tag,
    wait_state,
)
from tests.provisioner.integration.conftest import running_worker
from tests.runtime.integration.waiting import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.nats]

CLAIMED = ("claimed_vcpus", "claimed_memory_mib", "claimed_disk_gib", "claimed_gpus")


def claims(host: dict[str, object]) -> dict[str, object]:
    """What is claimed on a host, as ``hosts.get`` says (GPU models at zero left out)."""
    found = {key: host[key] for key in CLAIMED}
    gpus = found["claimed_gpus"]
    assert isinstance(gpus, dict)
    found["claimed_gpus"] = {model: n for model, n in gpus.items() if n}
    return found


async def test_a_small_instance_runs_stops_starts_and_is_deleted_on_its_simulated_host(
    simulated_lab: StackFactory, inventory: InventoryHarness, db: asyncpg.Connection
) -> None:
    async with simulated_lab() as stack:
        lab = stack.lab
        before = {name: claims(await stack.host(name)) for name in HOSTS}

        created = await inventory.call("instances.request", lab.request(), token=lab.member)
        iid = created["id"]
        running = await wait_state(inventory, lab, iid, "running")
        placed = running["host"]
        assert placed in ("h0", "h1"), f"a small instance belongs on a CPU host: {running}"
        assert running["datacenter"] == lab.datacenter

        # the domain runs on the host the inventory chose, and nowhere else
        assert stack.hosts_with(iid) == [placed]
        dom = stack.domain(placed, iid)
        assert dom is not None
        assert power(dom) == libvirt.VIR_DOMAIN_RUNNING
        assert dom.UUIDString() == iid
        meta = meta_of(dom)
        assert (meta.datacenter, meta.host) == (lab.datacenter, placed)
        assert str(meta.project_id) == lab.project_id
        assert str(meta.budget_code_id) == lab.budget_code_id
        _state, max_kib, _memory, vcpus, _cpu = dom.info()
        assert (vcpus, max_kib) == (2, 2048 * 1024), "the small type's size"
        assert stack.volumes(placed, iid), "the instance's disk overlay is in the host's pool"
        domain_uuid = await db.fetchval(
            "SELECT domain_uuid FROM inventory.instance WHERE id = $1", uuid.UUID(iid)
        )
        assert str(domain_uuid) == iid
        held = claims(await stack.host(placed))
        assert held["claimed_vcpus"] == before[placed]["claimed_vcpus"] + 2
        assert await claim_count(db, iid) == 1

        stopping = await inventory.call("instances.stop", {"instance_id": iid}, token=lab.member)
        assert stopping["state"] == "stopping"
        await wait_state(inventory, lab, iid, "stopped")
        dom = stack.domain(placed, iid)
        assert dom is not None, "a stopped instance keeps its domain"
        assert power(dom) == libvirt.VIR_DOMAIN_SHUTOFF
        assert await claim_count(db, iid) == 1, "a stopped instance keeps its place on the host"

        starting = await inventory.call("instances.start", {"instance_id": iid}, token=lab.member)
        assert starting["state"] == "starting"
        again = await wait_state(inventory, lab, iid, "running")
        assert again["host"] == placed
        dom = stack.domain(placed, iid)
        assert dom is not None
        assert power(dom) == libvirt.VIR_DOMAIN_RUNNING
        assert stack.hosts_with(iid) == [placed]

        deleting = await inventory.call("instances.delete", {"instance_id": iid}, token=lab.member)
        assert deleting["state"] == "deleting"
        await wait_state(inventory, lab, iid, "deleted")
        assert stack.hosts_with(iid) == [], "the domain is gone from every host"
        assert stack.volumes(placed, iid) == [], "and so are its volumes"
        assert await claim_count(db, iid) == 0
        assert await hold_count(db, iid) == 0
        assert {name: claims(await stack.host(name)) for name in HOSTS} == before


async def test_gpu_instances_get_the_hosts_listed_devices_one_each_and_give_them_back(
    simulated_lab: StackFactory, inventory: InventoryHarness, db: asyncpg.Connection
) -> None:
    async with simulated_lab() as stack:  # gpu0: two A100s at the lab's PCI addresses
        lab = stack.lab
        before = claims(await stack.host("gpu0"))
        listed = LAB_GPU_LABELS["gpu.pci.a100"].split(",")

        ids = []
        for _ in range(2):
            created = await inventory.call(
                "instances.request", lab.request(instance_type=lab.gpu), token=lab.member
            )
            ids.append(created["id"])
        devices = []
        for iid in ids:
            running = await wait_state(inventory, lab, iid, "running")
            assert running["host"] == "gpu0"
            dom = stack.domain("gpu0", iid)
            assert dom is not None
            assert power(dom) == libvirt.VIR_DOMAIN_RUNNING
            devices += hostdev_addresses(dom)
        assert sorted(devices) == sorted(listed), "each instance got its own listed device"
        assert claims(await stack.host("gpu0"))["claimed_gpus"] == {"a100": 2}

        # no third A100: the inventory refuses it before any host sees it
        third = await inventory.call(
            "instances.request", lab.request(instance_type=lab.gpu), token=lab.member
        )
        assert third["state"] == "rejected", third
        assert stack.hosts_with(third["id"]) == []

        # a device given back is handed out again
        await inventory.call("instances.delete", {"instance_id": ids[0]}, token=lab.member)
        await wait_state(inventory, lab, ids[0], "deleted")
        again = await inventory.call(
            "instances.request", lab.request(instance_type=lab.gpu), token=lab.member
        )
        await wait_state(inventory, lab, again["id"], "running")
        dom = stack.domain("gpu0", again["id"])
        kept = stack.domain("gpu0", ids[1])
        assert dom is not None
        assert kept is not None
        assert hostdev_addresses(dom) == sorted(set(listed) - set(hostdev_addresses(kept)))
        for iid in (ids[1], again["id"]):
            await inventory.call("instances.delete", {"instance_id": iid}, token=lab.member)
            await wait_state(inventory, lab, iid, "deleted")
        assert claims(await stack.host("gpu0")) == before
        assert await hold_count(db, again["id"]) == 0


def libvirt_refusal(uri: str) -> str:
    """What libvirt itself says when asked to open the URI."""
    with pytest.raises(libvirt.libvirtError) as caught:
        libvirt.open(uri)
    return str(caught.value.get_error_message())


async def test_a_request_on_a_host_that_cannot_be_opened_fails_and_the_host_is_marked_down(
    inventory: InventoryHarness, db: asyncpg.Connection, provisioner_schema: Servers
) -> None:
    lab = await make_lab(inventory, db)  # people, grant and catalogue; its own hosts stay idle
    admin = lab.admin
    dc = f"dead-{tag()}"
    uri = f"test:///no/such/{tag()}/file.xml"
    refusal = libvirt_refusal(uri)
    await inventory.call("datacenters.create", {"name": dc}, token=admin)
    host = await inventory.call(
        "hosts.register",
        {
            "datacenter": dc,
            "name": "dead0",
            "libvirt_uri": uri,
            "vcpus": 8,
            "memory_mib": 32768,
            "disk_gib": 500,
            "cpu_overcommit": "1.0",
        },
        token=admin,
    )
    # placed while the host is active: the command waits in the stream for the worker
    created = await inventory.call(
        "instances.request", lab.request(datacenter=dc), token=lab.member
    )
    iid = created["id"]
    assert (created["state"], created["host"]) == ("scheduled", "dead0"), created
    assert await claim_count(db, iid) == 1

    async with (
        StreamWatch.of(inventory.nc, HostUnreachable, datacenter=dc) as reports,
        running_worker(provisioner_schema, dc, host_unreachable_after_s=1.0),
    ):
        failed = await wait_state(inventory, lab, iid, "failed")
        assert failed["reason_code"] == "provisioning_failed"
        assert "dead0" in failed["reason"], failed["reason"]
        assert uri in failed["reason"], failed["reason"]
        assert refusal in failed["reason"], "libvirt's own reason"
        assert await claim_count(db, iid) == 0
        assert await hold_count(db, iid) == 0

        async def down() -> bool:
            found = await inventory.call("hosts.get", {"host_id": host["id"]}, token=admin)
            return bool(found["state"] == "down")

        await wait_until(down, 15, "the unreachable host marked down")
        seen = await reports.matching(HostUnreachable, where=lambda e: e.host == "dead0")
        assert len(seen) == 1, seen
        assert uri in seen[0].reason
        after = await inventory.call("hosts.get", {"host_id": host["id"]}, token=admin)
        assert claims(after) == {
            "claimed_vcpus": 0,
            "claimed_memory_mib": 0,
            "claimed_disk_gib": 0,
            "claimed_gpus": {},
        }
        # a down host takes no new work
        refused = await inventory.call(
            "instances.request", lab.request(datacenter=dc), token=lab.member
        )
        assert (refused["state"], refused["reason_code"]) == ("rejected", "no_capacity")
