"""Simulated hosts for libvirt's in-process test driver, CompGrid domains defined on them, and
the domains a simulated host keeps when its connection (its worker) goes away."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID
from xml.etree import ElementTree as ET

import libvirt
import pytest

from compgrid_provisioner.adapters.hypervisor import Hypervisor, Power
from compgrid_provisioner.adapters.simulated import (
    SavedDomain,
    SavedDomains,
    SimulatedHost,
    node_xml,
    write_hosts,
)
from compgrid_provisioner.domain.domain_xml import (
    NAMESPACE,
    Disk,
    DomainSpec,
    Meta,
    Network,
    domain_name,
    domain_xml,
    read_meta,
    volume_names,
)

POOL = "compgrid"
GIB = 1024**3
INSTANCE = UUID("9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d")

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors are raised, not printed


def _open(directory: Path, host: SimulatedHost, pool: str = POOL) -> libvirt.virConnect:
    uri = write_hosts(directory, [host], pool)[host.name]
    return libvirt.open(uri)


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[libvirt.virConnect]:
    """A test-driver connection to one default-sized simulated host."""
    connection = _open(tmp_path, SimulatedHost("sim-host-01"))
    yield connection
    connection.close()


def _spec(network: str = "none", gpus: tuple[str, ...] = ()) -> DomainSpec:
    meta = Meta(
        instance_id=INSTANCE,
        project_id=UUID("1a2b3c4d-0000-4000-8000-000000000001"),
        budget_code_id=UUID("1a2b3c4d-0000-4000-8000-000000000002"),
        datacenter="sim-dc",
        host="sim-host-01",
        defined_at=datetime(2026, 11, 25, 8, 0, 0, 250000, tzinfo=UTC),
    )
    return DomainSpec(
        meta=meta,
        name=domain_name(INSTANCE),
        domain_type="test",
        vcpus=2,
        memory_mib=2048,
        disks=(
            Disk(path=f"/simulated/sim-host-01/{POOL}/{volume_names(INSTANCE)[0]}"),
            Disk(
                path=f"/simulated/sim-host-01/{POOL}/{volume_names(INSTANCE)[1]}",
                device="sda",
                format="raw",
                cdrom=True,
            ),
        ),
        network=Network(network),
        gpu_addresses=gpus,
    )


# --- node_xml ---------------------------------------------------------------------------------


def test_node_xml_describes_the_host_size_and_its_pool() -> None:
    host = SimulatedHost("h1", vcpus=16, memory_mib=4096)
    root = ET.fromstring(node_xml(host, "images"))
    assert root.tag == "node"
    assert root.findtext("cpu/active") == "16"
    assert root.findtext("memory") == str(4096 * 1024)
    assert root.findtext("pool/name") == "images"
    assert root.findtext("pool/target/path") == "/simulated/h1/images"
    pool_type = root.find("pool")
    assert pool_type is not None
    assert pool_type.get("type") == "dir"


def test_node_xml_pool_uuid_is_stable_per_host_and_pool() -> None:
    def pool_uuid(host: str, pool: str) -> str:
        return ET.fromstring(node_xml(SimulatedHost(host), pool)).findtext("pool/uuid") or ""

    assert pool_uuid("h1", "p") == pool_uuid("h1", "p")
    assert UUID(pool_uuid("h1", "p"))
    assert len({pool_uuid("h1", "p"), pool_uuid("h2", "p"), pool_uuid("h1", "q")}) == 3


# --- write_hosts ------------------------------------------------------------------------------


def test_write_hosts_writes_one_file_per_host_and_returns_absolute_test_uris(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "not" / "yet" / "there"
    hosts = [SimulatedHost("sim-host-01"), SimulatedHost("sim-host-02", vcpus=8)]
    uris = write_hosts(directory, hosts, POOL)

    written = sorted(path.name for path in directory.iterdir())
    assert written == ["sim-host-01.xml", "sim-host-02.xml"]
    assert set(uris) == {"sim-host-01", "sim-host-02"}
    for host in hosts:
        path = (directory / f"{host.name}.xml").resolve()
        assert uris[host.name] == f"test://{path}"
        assert uris[host.name].startswith("test:///")
        assert path.read_text() == node_xml(host, POOL)


def test_write_hosts_resolves_a_relative_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    uris = write_hosts(Path("relative/dir"), [SimulatedHost("h")], POOL)
    expected = tmp_path.resolve() / "relative" / "dir" / "h.xml"
    assert uris == {"h": f"test://{expected}"}
    assert expected.is_file()


def test_write_hosts_overwrites_a_previous_file_of_the_host(tmp_path: Path) -> None:
    write_hosts(tmp_path, [SimulatedHost("h", vcpus=8)], POOL)
    write_hosts(tmp_path, [SimulatedHost("h", vcpus=32)], POOL)
    assert ET.fromstring((tmp_path / "h.xml").read_text()).findtext("cpu/active") == "32"


# --- the test driver opens the files ----------------------------------------------------------


@pytest.mark.parametrize(("vcpus", "memory_mib"), [(64, 256 * 1024), (8, 16384), (6, 4096)])
def test_test_driver_reports_the_simulated_cpus_and_memory(
    tmp_path: Path, vcpus: int, memory_mib: int
) -> None:
    with _open(tmp_path, SimulatedHost("h", vcpus=vcpus, memory_mib=memory_mib)) as conn:
        _model, memory, cpus, *_ = conn.getInfo()
    assert cpus == vcpus
    assert memory == memory_mib  # getInfo gives MiB


@pytest.mark.parametrize("vcpus", [5, 65])
def test_test_driver_reports_an_odd_cpu_count_exactly(tmp_path: Path, vcpus: int) -> None:
    """Any size a SimulatedHost (or ``simulate-hosts --vcpus``) accepts is reported as given."""
    with _open(tmp_path, SimulatedHost("h", vcpus=vcpus)) as conn:
        cpus = conn.getInfo()[2]
    assert cpus == vcpus


def test_test_driver_has_the_named_storage_pool_active(tmp_path: Path) -> None:
    with _open(tmp_path, SimulatedHost("h"), pool="images") as conn:
        pool = conn.storagePoolLookupByName("images")
        active = pool.isActive()
        target = ET.fromstring(pool.XMLDesc()).findtext("target/path")
        pools = conn.listStoragePools()
    assert active
    assert pools == ["images"]
    assert target == "/simulated/h/images"


def _overlay_xml(name: str, size_gib: int) -> str:
    """A disk volume as ``Hypervisor.create_overlay`` asks for it."""
    return (
        f"<volume><name>{name}</name><capacity unit='GiB'>{size_gib}</capacity>"
        "<allocation>0</allocation><target><format type='qcow2'/></target>"
        "<backingStore><path>/images/base.qcow2</path><format type='qcow2'/></backingStore>"
        "</volume>"
    )


def test_simulated_pool_takes_more_thin_disks_than_its_fixed_size(tmp_path: Path) -> None:
    """The driver's pool is 100 GiB; ten thin 20 GiB overlays (200 GiB) still fit."""
    with _open(tmp_path, SimulatedHost("h")) as conn:
        pool = conn.storagePoolLookupByName(POOL)
        for i in range(10):
            pool.createXML(_overlay_xml(f"disk-{i}", 20))
        volumes = pool.numOfVolumes()
        _state, capacity, allocation, _available = pool.info()
        disk_size = pool.storageVolLookupByName("disk-0").info()[1]
    assert volumes == 10
    assert capacity == 100 * GIB
    assert allocation == 0
    assert disk_size == 20 * GIB


def test_simulated_pool_takes_the_instance_volumes(conn: libvirt.virConnect) -> None:
    pool = conn.storagePoolLookupByName(POOL)
    disk, seed = volume_names(INSTANCE)
    pool.createXML(
        f"<volume><name>{disk}</name><capacity unit='GiB'>20</capacity>"
        "<target><format type='qcow2'/></target></volume>"
    )
    pool.createXML(
        f"<volume><name>{seed}</name><capacity unit='B'>4096</capacity>"
        "<target><format type='raw'/></target></volume>"
    )
    assert sorted(pool.listVolumes()) == sorted([disk, seed])
    assert pool.storageVolLookupByName(disk).path() == f"/simulated/sim-host-01/{POOL}/{disk}"


def test_simulated_host_starts_with_no_domains(conn: libvirt.virConnect) -> None:
    assert conn.listAllDomains() == []


# --- domain_xml is accepted by libvirt --------------------------------------------------------


@pytest.mark.parametrize("network", ["none", "user", "network:default", "bridge:br0"])
def test_domain_xml_defines_and_starts_on_the_test_driver(
    conn: libvirt.virConnect, network: str
) -> None:
    spec = _spec(network=network, gpus=("0000:81:00.0", "0000:82:00.0"))
    dom = conn.defineXML(domain_xml(spec))
    dom.create()

    assert dom.UUIDString() == str(INSTANCE)
    assert dom.name() == domain_name(INSTANCE)
    state, max_kib, _memory_kib, vcpus, _cpu_ns = dom.info()
    assert state == libvirt.VIR_DOMAIN_RUNNING
    assert max_kib == 2048 * 1024
    assert vcpus == 2
    assert conn.lookupByUUIDString(str(INSTANCE)).name() == domain_name(INSTANCE)


def test_libvirt_keeps_the_devices_of_the_definition(conn: libvirt.virConnect) -> None:
    dom = conn.defineXML(domain_xml(_spec(network="network:default", gpus=("0000:81:00.0",))))
    root = ET.fromstring(dom.XMLDesc())
    devices = [disk.get("device") for disk in root.findall("devices/disk")]
    targets = [dict(t.attrib) for t in root.findall("devices/disk/target")]
    assert devices == ["disk", "cdrom"]
    assert targets == [{"dev": "vda", "bus": "virtio"}, {"dev": "sda", "bus": "sata"}]
    addresses = [dict(a.attrib) for a in root.findall("devices/hostdev/source/address")]
    assert addresses == [{"domain": "0x0000", "bus": "0x81", "slot": "0x00", "function": "0x0"}]
    sources = [dict(s.attrib) for s in root.findall("devices/interface/source")]
    assert sources == [{"network": "default"}]


def test_metadata_read_from_libvirt_round_trips(conn: libvirt.virConnect) -> None:
    spec = _spec()
    dom = conn.defineXML(domain_xml(spec))
    dom.create()
    xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE)
    assert read_meta(xml) == spec.meta


def test_metadata_survives_a_restart_of_the_domain(conn: libvirt.virConnect) -> None:
    spec = _spec()
    dom = conn.defineXML(domain_xml(spec))
    dom.create()
    dom.destroy()
    dom.create()
    found = conn.lookupByUUIDString(str(INSTANCE))
    assert read_meta(found.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE)) == spec.meta


def test_a_foreign_domain_has_no_compgrid_metadata(conn: libvirt.virConnect) -> None:
    dom = conn.defineXML(
        "<domain type='test'><name>someone-else</name><memory unit='MiB'>128</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    with pytest.raises(libvirt.libvirtError) as exc:
        dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE)
    assert exc.value.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA


def test_a_second_define_of_the_same_instance_replaces_rather_than_duplicates(
    conn: libvirt.virConnect,
) -> None:
    conn.defineXML(domain_xml(_spec()))
    conn.defineXML(domain_xml(_spec(network="user")))
    assert [dom.UUIDString() for dom in conn.listAllDomains()] == [str(INSTANCE)]


# --- simulated hosts keep their domains across connections ------------------------------------


def _hypervisor(uri: str) -> Hypervisor:
    return Hypervisor(uri, domain_type="test", storage_pool=POOL, pool_path="/unused")


def test_a_simulated_host_opened_again_has_the_domains_it_had_running_or_stopped(
    tmp_path: Path,
) -> None:
    uri = write_hosts(tmp_path, [SimulatedHost("sim-host-01")], POOL)["sim-host-01"]
    first = _hypervisor(uri)
    running, stopped = _spec(), _spec()
    stopped = replace(
        stopped,
        meta=replace(stopped.meta, instance_id=UUID(int=7)),
        name=domain_name(UUID(int=7)),
    )
    first.define_and_start(running)
    first.define_and_start(stopped)
    assert first.stop(stopped.meta.instance_id, timeout_s=1) is Power.OFF
    first.close()

    write_hosts(tmp_path, [SimulatedHost("sim-host-01")], POOL)  # as `just dev` does on start
    again = _hypervisor(uri)
    assert again.power(running.meta.instance_id) is Power.RUNNING
    assert again.power(stopped.meta.instance_id) is Power.OFF
    assert {f.meta for f in again.ours()} == {running.meta, stopped.meta}

    again.remove(running.meta.instance_id, [])
    again.close()
    assert _hypervisor(uri).power(running.meta.instance_id) is Power.MISSING


def test_domains_are_kept_beside_the_node_file_and_not_for_the_default_host(
    tmp_path: Path,
) -> None:
    uri = write_hosts(tmp_path, [SimulatedHost("h")], POOL)["h"]
    saved = SavedDomains.of(uri)
    assert saved is not None
    assert saved.directory == tmp_path.resolve() / "h.domains"
    assert SavedDomains.of("test:///default") is None
    saved.save("a", SavedDomain("<domain/>", running=True))
    (saved.directory / "b.json").write_text("{not json")  # a torn file is skipped
    assert saved.load() == [SavedDomain("<domain/>", running=True)]
    saved.forget("a")
    assert saved.load() == []
