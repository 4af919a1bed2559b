"""Libvirt domain XML of an instance, and reading CompGrid's metadata back from it."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4
from xml.etree import ElementTree as ET

import pytest

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

INSTANCE = UUID("6f1c2a8e-0d4b-4c52-9a3e-1b2c3d4e5f60")
PROJECT = UUID("0a9b8c7d-6e5f-4a3b-8c1d-2e3f4a5b6c7d")
BUDGET = UUID("11111111-2222-4333-8444-555555555555")
DEFINED_AT = datetime(2026, 11, 25, 9, 30, 15, 123456, tzinfo=UTC)
META = Meta(
    instance_id=INSTANCE,
    project_id=PROJECT,
    budget_code_id=BUDGET,
    datacenter="eu-west_1",
    host="rack3-node07",
    defined_at=DEFINED_AT,
)


def _meta(**changes: Any) -> Meta:
    return replace(META, **changes)


def _spec(**changes: Any) -> DomainSpec:
    spec = DomainSpec(
        meta=META, name=domain_name(INSTANCE), domain_type="kvm", vcpus=4, memory_mib=8192
    )
    return replace(spec, **changes)


def _attr(element: ET.Element, path: str, name: str) -> str | None:
    found = element.find(path)
    assert found is not None, f"no {path} in {element.tag}"
    return found.get(name)


def _parse(spec: DomainSpec) -> ET.Element:
    return ET.fromstring(domain_xml(spec))


def _ns(tag: str) -> str:
    return f"{{{NAMESPACE}}}{tag}"


def _unqualified_meta_xml(meta: Meta) -> str:
    """The metadata as libvirt's ``virDomainGetMetadata`` returns it: no namespace at all."""
    return (
        "<instance>\n"
        f"  <id>{meta.instance_id}</id>\n"
        f"  <project>{meta.project_id}</project>\n"
        f"  <budget-code>{meta.budget_code_id}</budget-code>\n"
        f"  <datacenter>{meta.datacenter}</datacenter>\n"
        f"  <host>{meta.host}</host>\n"
        f"  <defined-at>{meta.defined_at.isoformat()}</defined-at>\n"
        "</instance>"
    )


# --- names ------------------------------------------------------------------------------------


def test_domain_name_is_prefixed_instance_id() -> None:
    assert domain_name(INSTANCE) == f"compgrid-{INSTANCE}"


def test_volume_names_are_the_disk_and_the_seed_of_the_domain() -> None:
    disk, seed = volume_names(INSTANCE)
    assert disk == f"compgrid-{INSTANCE}-disk.qcow2"
    assert seed == f"compgrid-{INSTANCE}-seed.iso"


def test_volume_names_differ_between_instances() -> None:
    other = uuid4()
    assert set(volume_names(INSTANCE)).isdisjoint(volume_names(other))


# --- Network ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["none", "user", "network:default", "bridge:br0"])
def test_network_accepts_the_documented_modes(mode: str) -> None:
    assert Network(mode).mode == mode


def test_network_defaults_to_user_mode() -> None:
    assert Network().mode == "user"


@pytest.mark.parametrize(
    "mode",
    ["", "wifi", "network", "bridge", "network:", "bridge:", "user:eth0", "direct:eth0", "NONE"],
)
def test_network_rejects_unknown_or_incomplete_modes(mode: str) -> None:
    with pytest.raises(ValueError, match=r"use none, user, network:<name> or bridge:<name>") as exc:
        Network(mode)
    assert repr(mode) in str(exc.value)


# --- domain_xml: identity and sizing ----------------------------------------------------------


def test_domain_uses_the_instance_id_as_uuid_and_the_given_name_and_type() -> None:
    root = _parse(_spec(domain_type="qemu"))
    assert root.tag == "domain"
    assert root.get("type") == "qemu"
    assert root.findtext("uuid") == str(INSTANCE)
    assert root.findtext("name") == f"compgrid-{INSTANCE}"
    assert str(INSTANCE) in (root.findtext("title") or "")


def test_domain_memory_is_given_in_mib_and_vcpus_as_count() -> None:
    root = _parse(_spec(vcpus=6, memory_mib=3072))
    memory = root.find("memory")
    assert memory is not None
    assert memory.get("unit") == "MiB"
    assert memory.text == "3072"
    assert root.findtext("vcpu") == "6"


def test_domain_is_destroyed_on_poweroff_and_crash_and_restarted_on_reboot() -> None:
    root = _parse(_spec())
    assert root.findtext("on_poweroff") == "destroy"
    assert root.findtext("on_reboot") == "restart"
    assert root.findtext("on_crash") == "destroy"


def test_domain_has_a_serial_console() -> None:
    devices = _parse(_spec()).find("devices")
    assert devices is not None
    serial = devices.find("serial")
    console = devices.find("console")
    assert serial is not None
    assert serial.get("type") == "pty"
    assert console is not None
    assert console.get("type") == "pty"


# --- domain_xml: metadata ---------------------------------------------------------------------


def test_metadata_element_carries_every_field_in_the_compgrid_namespace() -> None:
    root = _parse(_spec())
    ours = root.find(f"metadata/{_ns('instance')}")
    assert ours is not None
    assert {child.tag: child.text for child in ours} == {
        _ns("id"): str(INSTANCE),
        _ns("project"): str(PROJECT),
        _ns("budget-code"): str(BUDGET),
        _ns("datacenter"): "eu-west_1",
        _ns("host"): "rack3-node07",
        _ns("defined-at"): "2026-11-25T09:30:15.123456+00:00",
    }


def test_metadata_namespace_is_declared_with_the_compgrid_prefix() -> None:
    xml = domain_xml(_spec())
    assert f'xmlns:compgrid="{NAMESPACE}"' in xml
    assert "<compgrid:instance>" in xml


def test_metadata_with_markup_characters_is_escaped_and_survives() -> None:
    meta = _meta(host="node<1>&co", datacenter="dc")
    root = _parse(_spec(meta=meta))
    ours = root.find(f"metadata/{_ns('instance')}")
    assert ours is not None
    assert read_meta(ET.tostring(ours, encoding="unicode")) == meta


# --- domain_xml: disks ------------------------------------------------------------------------


def test_domain_without_disks_boots_from_hard_disk_only() -> None:
    root = _parse(_spec())
    assert [boot.get("dev") for boot in root.findall("os/boot")] == ["hd"]
    assert root.findall("devices/disk") == []
    os_type = root.find("os/type")
    assert os_type is not None
    assert os_type.text == "hvm"
    assert os_type.get("arch") == "x86_64"


def test_disk_and_cdrom_seed_are_attached_with_their_formats_and_buses() -> None:
    spec = _spec(
        disks=(
            Disk(path="/pool/disk.qcow2"),
            Disk(path="/pool/seed.iso", device="sda", format="raw", cdrom=True),
        )
    )
    root = _parse(spec)
    disk, cdrom = root.findall("devices/disk")

    assert disk.get("type") == "file"
    assert disk.get("device") == "disk"
    assert _attr(disk, "driver", "type") == "qcow2"
    assert _attr(disk, "source", "file") == "/pool/disk.qcow2"
    assert (_attr(disk, "target", "dev"), _attr(disk, "target", "bus")) == ("vda", "virtio")
    assert disk.find("readonly") is None

    assert cdrom.get("type") == "file"
    assert cdrom.get("device") == "cdrom"
    assert _attr(cdrom, "driver", "type") == "raw"
    assert _attr(cdrom, "source", "file") == "/pool/seed.iso"
    assert (_attr(cdrom, "target", "dev"), _attr(cdrom, "target", "bus")) == ("sda", "sata")
    assert cdrom.find("readonly") is not None


def test_a_cdrom_adds_a_second_boot_device_after_the_hard_disk() -> None:
    spec = _spec(
        disks=(Disk(path="/d.qcow2"), Disk(path="/s.iso", device="sda", format="raw", cdrom=True))
    )
    root = _parse(spec)
    assert [boot.get("dev") for boot in root.findall("os/boot")] == ["hd", "cdrom"]


# --- domain_xml: network ----------------------------------------------------------------------


def test_network_none_adds_no_interface() -> None:
    root = _parse(_spec(network=Network("none")))
    assert root.findall("devices/interface") == []


@pytest.mark.parametrize(
    ("mode", "kind", "source"),
    [
        ("user", "user", None),
        ("network:default", "network", {"network": "default"}),
        ("network:lab-net", "network", {"network": "lab-net"}),
        ("bridge:br0", "bridge", {"bridge": "br0"}),
    ],
)
def test_network_modes_become_one_virtio_interface(
    mode: str, kind: str, source: dict[str, str] | None
) -> None:
    root = _parse(_spec(network=Network(mode)))
    interfaces = root.findall("devices/interface")
    assert len(interfaces) == 1
    interface = interfaces[0]
    assert interface.get("type") == kind
    found = interface.find("source")
    if source is None:
        assert found is None
    else:
        assert found is not None
        assert dict(found.attrib) == source
    model = interface.find("model")
    assert model is not None
    assert model.get("type") == "virtio"


def test_default_spec_network_is_user_mode() -> None:
    root = _parse(_spec())
    assert [i.get("type") for i in root.findall("devices/interface")] == ["user"]


# --- domain_xml: GPUs -------------------------------------------------------------------------


def test_no_gpu_means_no_hostdev() -> None:
    assert _parse(_spec()).findall("devices/hostdev") == []


def test_gpu_addresses_become_managed_pci_hostdevs_in_order() -> None:
    root = _parse(_spec(gpu_addresses=("0000:81:00.0", "0001:AF:1f.7")))
    hostdevs = root.findall("devices/hostdev")
    assert len(hostdevs) == 2
    for hostdev in hostdevs:
        assert (hostdev.get("mode"), hostdev.get("type"), hostdev.get("managed")) == (
            "subsystem",
            "pci",
            "yes",
        )
    addresses = [hostdev.find("source/address") for hostdev in hostdevs]
    assert [dict(a.attrib) for a in addresses if a is not None] == [
        {"domain": "0x0000", "bus": "0x81", "slot": "0x00", "function": "0x0"},
        {"domain": "0x0001", "bus": "0xaf", "slot": "0x1f", "function": "0x7"},
    ]


@pytest.mark.parametrize(
    "address",
    [
        "",
        "81:00.0",  # no PCI domain
        "0000:81:00",  # no function
        "0000:81:00.0.1",
        "0000:81:00:00.0",
        "0000:zz:00.0",
        "gpu0",
        "0000:81:.0",
    ],
)
def test_malformed_gpu_address_is_refused_with_a_clear_error(address: str) -> None:
    with pytest.raises(ValueError, match=r"not a PCI address \(dddd:bb:ss\.f\)") as exc:
        domain_xml(_spec(gpu_addresses=(address,)))
    assert repr(address) in str(exc.value)


# --- read_meta --------------------------------------------------------------------------------


def test_read_meta_reads_back_what_domain_xml_wrote() -> None:
    meta = _meta()
    root = _parse(_spec(meta=meta))
    ours = root.find(f"metadata/{_ns('instance')}")
    assert ours is not None
    assert read_meta(ET.tostring(ours, encoding="unicode")) == meta


def test_read_meta_accepts_the_element_without_namespace_as_libvirt_returns_it() -> None:
    meta = _meta()
    found = read_meta(_unqualified_meta_xml(meta))
    assert found == meta


def test_read_meta_accepts_a_default_namespace_declaration() -> None:
    xml = _unqualified_meta_xml(_meta()).replace("<instance>", f'<instance xmlns="{NAMESPACE}">', 1)
    assert read_meta(xml) == _meta()


def test_read_meta_keeps_the_time_zone_and_microseconds_of_defined_at() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2)))
    found = read_meta(_unqualified_meta_xml(_meta(defined_at=at)))
    assert found is not None
    assert found.defined_at == at
    assert found.defined_at.utcoffset() == timedelta(hours=2)
    assert found.defined_at.microsecond == 678901


@pytest.mark.parametrize(
    "xml",
    [
        "",
        "not xml at all",
        "<instance><id>",
        "<instance/>",
    ],
)
def test_read_meta_returns_none_for_broken_or_foreign_xml(xml: str) -> None:
    assert read_meta(xml) is None


def test_read_meta_returns_none_for_elements_of_another_namespace() -> None:
    foreign = _unqualified_meta_xml(_meta()).replace(
        "<instance>", '<instance xmlns="https://example.org/other/1">', 1
    )
    assert read_meta(foreign) is None


@pytest.mark.parametrize(
    "missing", ["id", "project", "budget-code", "datacenter", "host", "defined-at"]
)
def test_read_meta_returns_none_when_a_field_is_missing(missing: str) -> None:
    lines = _unqualified_meta_xml(_meta()).splitlines()
    xml = "\n".join(line for line in lines if f"<{missing}>" not in line)
    assert xml != "\n".join(lines)
    assert read_meta(xml) is None


@pytest.mark.parametrize("empty", ["id", "datacenter", "host", "defined-at"])
def test_read_meta_returns_none_when_a_field_is_empty(empty: str) -> None:
    xml = _unqualified_meta_xml(_meta())
    start = xml.index(f"<{empty}>") + len(f"<{empty}>")
    end = xml.index(f"</{empty}>")
    assert read_meta(xml[:start] + xml[end:]) is None


@pytest.mark.parametrize(
    ("field", "bad"),
    [("id", "not-a-uuid"), ("project", "1234"), ("budget-code", "x"), ("defined-at", "yesterday")],
)
def test_read_meta_returns_none_when_a_value_does_not_parse(field: str, bad: str) -> None:
    xml = _unqualified_meta_xml(_meta())
    start = xml.index(f"<{field}>") + len(f"<{field}>")
    end = xml.index(f"</{field}>")
    assert read_meta(xml[:start] + bad + xml[end:]) is None
