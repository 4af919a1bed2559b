"""Provisioning commands on simulated (``test:///``) hosts: repeated, duplicated, stale and
misdirected commands, what a create leaves on the host (domain XML, volumes, GPUs), and a host
that cannot be reached."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from uuid import UUID
from xml.etree import ElementTree as ET

import asyncpg
import libvirt
import nats

from compgrid_events import Event
from compgrid_events.inventory import (
    InstanceDeleteRequested,
    InstanceScheduled,
    InstanceStartRequested,
)
from compgrid_events.provisioner import (
    HostUnreachable,
    InstanceDeleted,
    InstanceFailed,
    InstanceStarted,
    InstanceStopped,
)
from compgrid_provisioner.adapters.hypervisor import find_domain
from compgrid_provisioner.domain.domain_xml import (
    NAMESPACE,
    domain_name,
    read_meta,
    volume_names,
)
from tests.harness.servers import Servers
from tests.harness.streams import StreamWatch
from tests.provisioner.integration.conftest import (
    REAL_POOL,
    Datacenter,
    Worker,
    running_worker,
    tag,
)
from tests.runtime.integration.waiting import wait_until

IMAGE = "/images/base.qcow2"
SETTLE_S = 0.8
"""Time given to results that must not come, after the command was seen applied."""


# Helpers -------------------------------------------------------------------------------------


def _dsn(real: Servers) -> str:
    return real.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _fetch(real: Servers, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(_dsn(real))
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def _instance(real: Servers, instance_id: UUID) -> asyncpg.Record | None:
    rows = await _fetch(real, "SELECT * FROM provisioner.instance WHERE id = $1", instance_id)
    return rows[0] if rows else None


async def _host_known(real: Servers, datacenter: str, name: str) -> None:
    """Wait until the worker has taken in the host's announcement (labels included)."""

    async def known() -> bool:
        rows = await _fetch(
            real,
            "SELECT 1 FROM provisioner.host WHERE datacenter = $1 AND name = $2",
            datacenter,
            name,
        )
        return bool(rows)

    await wait_until(known, 15, f"host {name} known to the provisioner")


async def _publish(dc: Datacenter, event: Event, *, msg_id: str | None = None) -> int:
    """Publish as the inventory does (or under another message id); return the stream seq."""
    ack = await dc.nc.jetstream().publish(
        event.subject, event.to_json(), headers={"Nats-Msg-Id": msg_id or str(event.event_id)}
    )
    return int(ack.seq)


async def _applied(dc: Datacenter, seq: int, timeout_s: float = 15) -> None:
    """Wait until the datacenter's command consumer acknowledged everything up to ``seq``."""
    js = dc.nc.jetstream()
    durable = f"provisioner-{dc.name}-commands"

    async def done() -> bool:
        info = await js.consumer_info("PROVISION", durable)
        return (info.ack_floor.stream_seq or 0) >= seq and not info.num_ack_pending

    await wait_until(done, timeout_s, f"command #{seq} applied by {durable}")


def _domain(worker: Worker, uri: str, instance_id: UUID) -> libvirt.virDomain | None:
    return find_domain(worker.hypervisor(uri), instance_id)


def _domains_of(worker: Worker, uri: str, instance_id: UUID) -> list[libvirt.virDomain]:
    """Every domain on the host that is this instance's (by UUID or by name)."""
    conn = worker.hypervisor(uri)
    return [
        d
        for d in conn.listAllDomains()
        if d.UUIDString() == str(instance_id) or d.name() == domain_name(instance_id)
    ]


def _volumes(worker: Worker, uri: str) -> set[str]:
    conn = worker.hypervisor(uri)
    return set(conn.storagePoolLookupByName(REAL_POOL).listVolumes())


def _json_list(value: Any) -> list[Any]:
    """A JSONB column as asyncpg returns it (text) as a list."""
    return list(json.loads(value) if isinstance(value, str) else value)


def _hostdev_addresses(dom: libvirt.virDomain) -> list[str]:
    """The PCI addresses of the domain's host devices, as ``dddd:bb:ss.f``."""
    root = ET.fromstring(dom.XMLDesc())
    found = []
    for address in root.findall("./devices/hostdev/source/address"):
        found.append(
            f"{int(address.get('domain', '0'), 16):04x}:{int(address.get('bus', '0'), 16):02x}:"
            f"{int(address.get('slot', '0'), 16):02x}.{int(address.get('function', '0'), 16):x}"
        )
    return found


async def _started(dc: Datacenter, event: InstanceScheduled) -> InstanceStarted:
    await dc.publish(event)
    assert dc.results is not None
    return await dc.results.wait_for(
        InstanceStarted,
        str(event.instance_id),
        where=lambda e: e.command_event_id == event.event_id,
    )


def _again(event: Event) -> Any:
    """The same command again, as a new event (new id), e.g. re-sent by the inventory."""
    data = event.model_dump()
    data.pop("event_id")
    data.pop("occurred_at")
    return type(event)(**data)


@contextlib.asynccontextmanager
async def _other_datacenter(real: Servers) -> AsyncIterator[Datacenter]:
    """A second datacenter with watches on its results and usage (like the fixture's)."""
    client = await nats.connect(real.nats_url)
    dc = Datacenter(f"dc-{tag()}", client)
    dc.results = await StreamWatch(client, "PROVISIONER", f"provisioner.{dc.name}.>").start()
    dc.usage = await StreamWatch(client, "USAGE", f"usage.{dc.name}.>").start()
    try:
        yield dc
    finally:
        await dc.results.stop()
        await dc.usage.stop()
        await client.close()


async def _one_host(
    dc: Datacenter, simulated_hosts: Callable[..., dict[str, str]], **labels: str
) -> tuple[str, str]:
    name, uri = next(iter(simulated_hosts(1).items()))
    await dc.add_host(name, uri, labels=labels or None)
    return name, uri


# Repeated and duplicated commands ------------------------------------------------------------


async def test_a_create_sent_again_with_a_new_event_id_reports_started_and_makes_no_second_domain(
    provisioner_schema: Servers,
    datacenter: Datacenter,
    simulated_hosts: Callable[..., dict[str, str]],
) -> None:
    name, uri = await _one_host(datacenter, simulated_hosts)
    results = datacenter.results
    assert results is not None
    async with running_worker(provisioner_schema, datacenter.name) as worker:
        create = datacenter.schedule(name, vcpus=2, memory_mib=64)
        await _started(datacenter, create)
        dom = _domain(worker, uri, create.instance_id)
        assert dom is not None
        domain_id = dom.ID()  # a domain started again would get a new id
        before = await _instance(provisioner_schema, create.instance_id)
        assert before is not None

        again = _again(create)
        assert again.event_id != create.event_id
        assert (again.instance_id, again.version) == (create.instance_id, create.version)
        second = await _started(datacenter, again)

        assert second.command_event_id == again.event_id
        assert second.domain_uuid == create.instance_id
        assert len(_domains_of(worker, uri, create.instance_id)) == 1
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert dom.ID() == domain_id
        assert len(await results.matching(InstanceStarted, str(create.instance_id))) == 2
        assert not await results.matching(InstanceFailed, str(create.instance_id))
        after = await _instance(provisioner_schema, create.instance_id)
        assert after is not None
        assert (after["observed"], after["desired"]) == ("running", "running")
        assert after["command_version"] == create.version
        # still metered as one running instance: its interval was not restarted at the repeat
        assert after["metered_from"] is not None
        intervals = await datacenter.intervals(create.instance_id)
        for (_, ended, _), (began, _, _) in itertools.pairwise(intervals):
            assert ended == began


async def test_the_very_same_create_delivered_twice_is_applied_once(
    provisioner_schema: Servers,
    datacenter: Datacenter,
    simulated_hosts: Callable[..., dict[str, str]],
) -> None:
    name, uri = await _one_host(datacenter, simulated_hosts)
    results = datacenter.results
    assert results is not None
    async with running_worker(provisioner_schema, datacenter.name) as worker:
        create = datacenter.schedule(name)
        await _publish(datacenter, create)
        await results.wait_for(InstanceStarted, str(create.instance_id))
        # the same event (same event id) once more, past JetStream's duplicate window: only
        # the provisioner's inbox can recognise it
        seq = await _publish(datacenter, create, msg_id=f"{create.event_id}-redelivered")
        await _applied(datacenter, seq)
        await asyncio.sleep(SETTLE_S)

        assert len(await results.matching(InstanceStarted, str(create.instance_id))) == 1
        assert len(await results.about(str(create.instance_id))) == 1
        assert len(_domains_of(worker, uri, create.instance_id)) == 1
        inbox = await _fetch(
            provisioner_schema,
            "SELECT consumer FROM provisioner.inbox WHERE event_id = $1",
            create.event_id,
        )
        assert len(inbox) == 1


async def test_stale_commands_change_nothing(
    provisioner_schema: Servers,
    datacenter: Datacenter,
    simulated_hosts: Callable[..., dict[str, str]],
) -> None:
    name, uri = await _one_host(datacenter, simulated_hosts)
    results = datacenter.results
    assert results is not None
    async with running_worker(provisioner_schema, datacenter.name) as worker:
        create = datacenter.schedule(name)
        await _started(datacenter, create)
        stop = datacenter.stop(create.instance_id)  # version 2
        await datacenter.publish(stop)
        await results.wait_for(InstanceStopped, str(create.instance_id))
        dom = _domain(worker, uri, create.instance_id)
        assert dom is not None
        assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
        before = await results.about(str(create.instance_id))

        # commands older than the stop arrive late: a start, a re-sent create, a delete
        stale: list[Event] = [
            InstanceStartRequested(
                instance_id=create.instance_id, version=1, datacenter=datacenter.name, host=name
            ),
            _again(create),
            InstanceDeleteRequested(
                instance_id=create.instance_id, version=1, datacenter=datacenter.name, host=name
            ),
        ]
        seq = 0
        for event in stale:
            seq = await _publish(datacenter, event)
        await _applied(datacenter, seq)
        await asyncio.sleep(SETTLE_S)

        assert await results.about(str(create.instance_id)) == before
        dom = _domain(worker, uri, create.instance_id)
        assert dom is not None, "a stale delete removed the domain"
        assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
        row = await _instance(provisioner_schema, create.instance_id)
        assert row is not None
        assert (row["observed"], row["desired"], row["command_version"]) == (
            "stopped",
            "stopped",
            stop.version,
        )


async def test_stopping_a_stopped_instance_reports_stopped_again_and_does_no_harm(
    provisioner_schema: Servers,
    datacenter: Datacenter,
    simulated_hosts: Callable[..., dict[str, str]],
) -> None:
    name, uri = await _one_host(datacenter, simulated_hosts)
    results = datacenter.results
    assert results is not None
    async with running_worker(provisioner_schema, datacenter.name) as worker:
        create = datacenter.schedule(name)
        await _started(datacenter, create)
        first = datacenter.stop(create.instance_id)
        await datacenter.publish(first)
        stopped = await results.wait_for(InstanceStopped, str(create.instance_id))
        closed = await datacenter.intervals(create.instance_id)

        second = datacenter.stop(create.instance_id)
        await datacenter.publish(second)
        again = await results.wait_for(
            InstanceStopped,
            str(create.instance_id),
            where=lambda e: e.command_event_id == second.event_id,
        )
        assert again.stopped_at >= stopped.stopped_at
        assert not await results.matching(InstanceFailed, str(create.instance_id))
        dom = _domain(worker, uri, create.instance_id)
        assert dom is not None
        assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
        row = await _instance(provisioner_schema, create.instance_id)
        assert row is not None
        assert (row["observed"], row["metered_from"]) == ("stopped", None)
        # no usage for the time it was stopped
        await asyncio.sleep(SETTLE_S)
        intervals = await datacenter.intervals(create.instance_id)
        assert intervals == closed
        assert all(ended <= stopped.stopped_at for _, ended, _ in intervals)

        # and it still starts
        await datacenter.publish(datacenter.start(create.instance_id))
        await results.wait_for(InstanceStarted, str(create.instance_id), count=2)
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING


# What a create leaves on the host ------------------------------------------------------------


async def test_delete_removes_the_domain_and_its_volumes(
    provisioner_schema: Servers,
    datacenter: Datacenter,
    simulated_hosts: Callable[..., dict[str, str]],
) -> None:
    name, uri = await _one_host(datacenter, simulated_hosts)
    results = datacenter.results
    assert results is not None
    async with running_worker(provisioner_schema, datacenter.name) as worker:
        keep = datacenter.schedule(name, disk_gib=10, image_source=IMAGE)
        create = datacenter.schedule(name, disk_gib=10, image_source=IMAGE)
        await _started(datacenter, keep)
        await _started(datacenter, create)
        disk, seed = volume_names(create.instance_id)
        volumes = _volumes(worker, uri)
        assert {disk, seed} <= volumes
        assert set(volume_names(keep.instance_id)) <= volumes
        dom = _domain(worker, uri, create.instance_id)
        assert dom is not None
        sources = [
            s.get("file") for s in ET.fromstring(dom.XMLDesc()).findall("./devices/disk/source")
        ]
        assert sorted(str(s).rsplit("/", 1)[-1] for s in sources) == sorted([disk, seed])
        row = await _instance(provisioner_schema, create.instance_id)
        assert row is not None
        assert sorted(_json_list(row["volumes"])) == sorted([disk, seed])

        delete = datacenter.delete(create.instance_id)
        await datacenter.publish(delete)
        deleted = await results.wait_for(InstanceDeleted, str(create.instance_id))
        assert deleted.command_event_id == delete.event_id

        assert _domains_of(worker, uri, create.instance_id) == []
        left = _volumes(worker, uri)
        assert disk not in left
        assert seed not in left
        assert set(volume_names(keep.instance_id)) <= left  # the neighbour's are untouched
        assert _domain(worker, uri, keep.instance_id) is not None
        row = await _instance(provisioner_schema, create.instance_id)
        assert row is not None
        assert (row["observed"], row["desired"], row["metered_from"]) == (
            "deleted",
            "deleted",
            None,
        )


async def test_the_domain_carries_the_instance_metadata_and_size(
    provisioner_schema: Servers,
    datacenter: Datacenter,
    simulated_hosts: Callable[..., dict[str, str]],
) -> None:
    name, uri = await _one_host(datacenter, simulated_hosts)
    async with running_worker(provisioner_schema, datacenter.name) as worker:
        project, budget = uuid.uuid4(), uuid.uuid4()
        create = datacenter.schedule(
            name, vcpus=3, memory_mib=96, project_id=project, budget_code_id=budget
        )
        started = await _started(datacenter, create)
        dom = _domain(worker, uri, create.instance_id)
        assert dom is not None

        assert dom.name() == domain_name(create.instance_id)
        meta = read_meta(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE))
        assert meta is not None
        assert meta.instance_id == create.instance_id
        assert meta.project_id == project
        assert meta.budget_code_id == budget
        assert (meta.datacenter, meta.host) == (datacenter.name, name)
        assert meta.defined_at <= started.started_at

        root = ET.fromstring(dom.XMLDesc())
        assert root.findtext("uuid") == str(create.instance_id)
        assert int(root.findtext("vcpu") or 0) == 3
        memory = root.find("memory")
        assert memory is not None
        assert memory.get("unit") == "KiB"
        assert int(memory.text or 0) == 96 * 1024
        state, max_kib, _memory_kib, vcpus, _cpu = dom.info()
        assert (state, max_kib, vcpus) == (libvirt.VIR_DOMAIN_RUNNING, 96 * 1024, 3)
        assert root.findall("./devices/hostdev") == []

        row = await _instance(provisioner_schema, create.instance_id)
        assert row is not None
        assert (row["project_id"], row["budget_code_id"]) == (project, budget)
        assert (row["vcpus"], row["memory_mib"], row["host"]) == (3, 96, name)


async def test_gpu_instances_get_distinct_devices_and_a_gpu_too_many_fails_naming_the_model(
    provisioner_schema: Servers,
    datacenter: Datacenter,
    simulated_hosts: Callable[..., dict[str, str]],
) -> None:
    a100 = ["0000:81:00.0", "0000:82:00.0"]
    h100 = ["0000:c1:00.0"]
    name, uri = await _one_host(
        datacenter,
        simulated_hosts,
        **{"gpu.pci.a100": " , ".join(a100), "gpu.pci.h100": h100[0]},
    )
    results = datacenter.results
    assert results is not None
    async with running_worker(provisioner_schema, datacenter.name) as worker:
        await _host_known(provisioner_schema, datacenter.name, name)
        first = datacenter.schedule(name, gpus={"a100": 1, "h100": 1})
        second = datacenter.schedule(name, gpus={"a100": 1})
        await _started(datacenter, first)
        await _started(datacenter, second)

        dom1 = _domain(worker, uri, first.instance_id)
        dom2 = _domain(worker, uri, second.instance_id)
        assert dom1 is not None
        assert dom2 is not None
        got1, got2 = _hostdev_addresses(dom1), _hostdev_addresses(dom2)
        assert len(got1) == 2
        assert len(got2) == 1
        assert h100[0] in got1
        assert set(got1) - set(h100) <= set(a100)
        assert set(got2) <= set(a100)
        assert not set(got1) & set(got2), f"one GPU given twice: {got1} {got2}"
        row1 = await _instance(provisioner_schema, first.instance_id)
        assert row1 is not None
        assert sorted(_json_list(row1["gpu_addresses"])) == sorted(got1)

        # both A100s are taken: a third A100 cannot be had
        third = datacenter.schedule(name, gpus={"a100": 1})
        await datacenter.publish(third)
        failed = await results.wait_for(InstanceFailed, str(third.instance_id))
        assert failed.command_event_id == third.event_id
        assert "a100" in failed.reason
        assert _domains_of(worker, uri, third.instance_id) == []
        assert not await results.matching(InstanceStarted, str(third.instance_id))
        row3 = await _instance(provisioner_schema, third.instance_id)
        assert row3 is not None
        assert row3["observed"] == "failed"
        assert _json_list(row3["gpu_addresses"]) == []

        # a deleted instance gives its GPUs back
        await datacenter.publish(datacenter.delete(first.instance_id))
        await results.wait_for(InstanceDeleted, str(first.instance_id))
        fourth = datacenter.schedule(name, gpus={"a100": 1})
        await _started(datacenter, fourth)
        dom4 = _domain(worker, uri, fourth.instance_id)
        assert dom4 is not None
        got4 = _hostdev_addresses(dom4)
        assert len(got4) == 1
        assert got4[0] in a100
        assert got4[0] not in got2


async def test_a_gpu_create_that_outruns_its_hosts_announcement_waits_for_it(
    provisioner_schema: Servers,
    datacenter: Datacenter,
    simulated_hosts: Callable[..., dict[str, str]],
) -> None:
    """Hosts and commands come on different streams: a GPU create for a host the worker has
    not heard of yet is retried, not failed, and runs once the host is announced."""
    name, uri = next(iter(simulated_hosts(1).items()))
    datacenter.hosts[name] = uri  # the command names the host; its announcement comes later
    results = datacenter.results
    assert results is not None
    async with running_worker(provisioner_schema, datacenter.name) as worker:
        create = datacenter.schedule(name, gpus={"a100": 1})
        await datacenter.publish(create)
        await asyncio.sleep(1.0)
        assert not await results.about(str(create.instance_id)), "neither started nor failed"
        await datacenter.add_host(name, uri, labels={"gpu.pci.a100": "0000:81:00.0"})
        await results.wait_for(InstanceStarted, str(create.instance_id), timeout_s=20)
        dom = _domain(worker, uri, create.instance_id)
        assert dom is not None
        assert _hostdev_addresses(dom) == ["0000:81:00.0"]
    assert not await results.matching(InstanceFailed, str(create.instance_id))


# Hosts that cannot be reached, and other datacenters -----------------------------------------


async def test_a_host_that_cannot_be_opened_fails_the_create_and_is_reported_unreachable_once(
    provisioner_schema: Servers,
    datacenter: Datacenter,
    simulated_hosts: Callable[..., dict[str, str]],
) -> None:
    good, good_uri = await _one_host(datacenter, simulated_hosts)
    dead, dead_uri = "dead-host", f"test:///nonexistent/{tag()}/file.xml"
    await datacenter.add_host(dead, dead_uri)
    results = datacenter.results
    assert results is not None
    after_s = 1.5
    async with running_worker(
        provisioner_schema, datacenter.name, host_unreachable_after_s=after_s
    ) as worker:
        create = datacenter.schedule(dead)
        await datacenter.publish(create)
        failed = await results.wait_for(InstanceFailed, str(create.instance_id))
        assert failed.command_event_id == create.event_id
        assert dead in failed.reason
        assert dead_uri in failed.reason
        assert not await results.matching(InstanceStarted, str(create.instance_id))
        row = await _instance(provisioner_schema, create.instance_id)
        assert row is not None
        assert row["observed"] == "failed"
        assert dead_uri in row["reason"]

        reported = await results.wait_for(
            HostUnreachable, where=lambda e: e.host == dead, timeout_s=15
        )
        assert reported.datacenter == datacenter.name
        assert dead_uri in reported.reason
        hosts = await _fetch(
            provisioner_schema,
            "SELECT * FROM provisioner.host WHERE datacenter = $1 AND name = $2",
            datacenter.name,
            dead,
        )
        assert hosts[0]["unreachable_reported"] is True
        since = hosts[0]["unreachable_since"]
        assert since is not None
        assert (reported.occurred_at - since).total_seconds() >= after_s

        # many more observation rounds: still reported once, and the good host never
        await asyncio.sleep(2.5)
        assert len(await results.matching(HostUnreachable, where=lambda e: e.host == dead)) == 1
        assert not await results.matching(HostUnreachable, where=lambda e: e.host == good)
        # the good host keeps working meanwhile
        fine = datacenter.schedule(good)
        await _started(datacenter, fine)
        assert _domain(worker, good_uri, fine.instance_id) is not None


async def test_commands_for_another_datacenter_wait_for_that_datacenters_worker(
    provisioner_schema: Servers,
    datacenter: Datacenter,
    simulated_hosts: Callable[..., dict[str, str]],
) -> None:
    uris = simulated_hosts(2)
    (name_a, uri_a), (name_b, uri_b) = list(uris.items())
    await datacenter.add_host(name_a, uri_a)
    results_a = datacenter.results
    assert results_a is not None
    async with _other_datacenter(provisioner_schema) as other:
        await other.add_host(name_b, uri_b)
        results_b = other.results
        assert results_b is not None
        async with running_worker(provisioner_schema, datacenter.name) as worker_a:
            # the worker of A is alive and working
            own = datacenter.schedule(name_a)
            await _started(datacenter, own)

            create = other.schedule(name_b)
            await other.publish(create)
            await asyncio.sleep(2.0)
            # meanwhile A keeps working: a later command of A is applied...
            later = datacenter.schedule(name_a)
            await _started(datacenter, later)
            await asyncio.sleep(SETTLE_S)
            # ...while B's command was not touched
            assert await results_b.events() == []
            assert await other.ticks() == []
            assert not await results_a.about(str(create.instance_id))
            assert await _instance(provisioner_schema, create.instance_id) is None
            assert _domain(worker_a, uri_b, create.instance_id) is None
            assert _domain(worker_a, uri_a, create.instance_id) is None

        async with running_worker(provisioner_schema, other.name) as worker_b:
            started = await results_b.wait_for(InstanceStarted, str(create.instance_id))
            assert started.command_event_id == create.event_id
            assert started.datacenter == other.name
            dom = _domain(worker_b, uri_b, create.instance_id)
            assert dom is not None
            assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
            row = await _instance(provisioner_schema, create.instance_id)
            assert row is not None
            assert (row["datacenter"], row["observed"]) == (other.name, "running")
            assert not await results_a.about(str(create.instance_id))
