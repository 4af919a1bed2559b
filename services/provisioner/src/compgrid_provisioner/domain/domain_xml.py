"""Libvirt domain XML for one instance, and reading CompGrid's metadata back from a domain.

The domain's UUID is the instance id, so every command finds its domain without a lookup
table and a second define of the same instance can never make a second domain. The metadata
element (namespace :data:`NAMESPACE`) names the instance, its project, budget code, datacenter
and host and when the domain was defined: reconcile tells CompGrid's domains from others' by it,
never by name alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID
from xml.etree import ElementTree as ET

NAMESPACE = "https://compgrid.dev/xmlns/instance/1"
PREFIX = "compgrid"


@dataclass(frozen=True)
class Disk:
    """A disk volume: its path on the host, format and guest device (``vda``, ``sda``...)."""

    path: str
    device: str = "vda"
    format: str = "qcow2"
    cdrom: bool = False


@dataclass(frozen=True)
class Network:
    """How the guest is connected: ``none``, ``user``, ``network:<name>`` or ``bridge:<name>``."""

    mode: str = "user"

    def __post_init__(self) -> None:
        kind, _, name = self.mode.partition(":")
        if kind in ("none", "user") and not name:
            return
        if kind in ("network", "bridge") and name:
            return
        raise ValueError(f"network {self.mode!r}: use none, user, network:<name> or bridge:<name>")


@dataclass(frozen=True)
class Meta:
    """What CompGrid writes into (and reads back from) a domain's metadata."""

    instance_id: UUID
    project_id: UUID
    budget_code_id: UUID
    datacenter: str
    host: str
    defined_at: datetime


@dataclass(frozen=True)
class DomainSpec:
    """Everything a domain definition needs."""

    meta: Meta
    name: str
    domain_type: str
    vcpus: int
    memory_mib: int
    disks: tuple[Disk, ...] = ()
    network: Network = field(default_factory=Network)
    gpu_addresses: tuple[str, ...] = ()


def domain_name(instance_id: UUID) -> str:
    """The libvirt name of an instance's domain (unique per host, like the UUID)."""
    return f"compgrid-{instance_id}"


def volume_names(instance_id: UUID) -> list[str]:
    """The storage volumes an instance may have: its disk and its cloud-init seed."""
    base = domain_name(instance_id)
    return [f"{base}-disk.qcow2", f"{base}-seed.iso"]


def _pci(address: str) -> dict[str, str]:
    """``0000:81:00.0`` → the attributes of a libvirt PCI ``<address>``."""
    try:
        domain, bus, rest = address.split(":")
        slot, function = rest.split(".")
        return {
            "domain": f"0x{int(domain, 16):04x}",
            "bus": f"0x{int(bus, 16):02x}",
            "slot": f"0x{int(slot, 16):02x}",
            "function": f"0x{int(function, 16):x}",
        }
    except ValueError:
        raise ValueError(f"not a PCI address (dddd:bb:ss.f): {address!r}") from None


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def domain_xml(spec: DomainSpec) -> str:
    """Return the domain definition for ``spec``."""
    meta = spec.meta
    root = ET.Element("domain", {"type": spec.domain_type})
    _sub(root, "name", spec.name)
    _sub(root, "uuid", str(meta.instance_id))
    _sub(root, "title", f"CompGrid instance {meta.instance_id}")
    metadata = _sub(root, "metadata")
    ours = ET.SubElement(metadata, f"{{{NAMESPACE}}}instance")
    for tag, value in (
        ("id", str(meta.instance_id)),
        ("project", str(meta.project_id)),
        ("budget-code", str(meta.budget_code_id)),
        ("datacenter", meta.datacenter),
        ("host", meta.host),
        ("defined-at", meta.defined_at.isoformat()),
    ):
        _sub(ours, f"{{{NAMESPACE}}}{tag}", value)
    _sub(root, "memory", str(spec.memory_mib), unit="MiB")
    _sub(root, "vcpu", str(spec.vcpus))
    os_ = _sub(root, "os")
    _sub(os_, "type", "hvm", arch="x86_64")
    _sub(os_, "boot", dev="hd")
    if any(d.cdrom for d in spec.disks):
        _sub(os_, "boot", dev="cdrom")
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")
    devices = _sub(root, "devices")
    for disk in spec.disks:
        element = _sub(devices, "disk", type="file", device="cdrom" if disk.cdrom else "disk")
        _sub(element, "driver", name="qemu", type=disk.format)
        _sub(element, "source", file=disk.path)
        _sub(element, "target", dev=disk.device, bus="sata" if disk.cdrom else "virtio")
        if disk.cdrom:
            _sub(element, "readonly")
    kind, _, name = spec.network.mode.partition(":")
    if kind != "none":
        interface = _sub(devices, "interface", type=kind)
        if kind == "network":
            _sub(interface, "source", network=name)
        elif kind == "bridge":
            _sub(interface, "source", bridge=name)
        _sub(interface, "model", type="virtio")
    for address in spec.gpu_addresses:
        hostdev = _sub(devices, "hostdev", mode="subsystem", type="pci", managed="yes")
        source = _sub(hostdev, "source")
        _sub(source, "address", **_pci(address))
    _sub(devices, "serial", type="pty")
    _sub(devices, "console", type="pty")
    ET.register_namespace(PREFIX, NAMESPACE)
    return ET.tostring(root, encoding="unicode")


def read_meta(xml: str) -> Meta | None:
    """CompGrid's metadata from a metadata element's XML, or None when it is not ours or broken."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None

    def text(tag: str) -> str:
        found = root.find(f"{{{NAMESPACE}}}{tag}")
        if found is None:
            found = root.find(tag)  # libvirt returns the element without its namespace
        if found is None or not found.text:
            raise ValueError(tag)
        return found.text

    try:
        return Meta(
            instance_id=UUID(text("id")),
            project_id=UUID(text("project")),
            budget_code_id=UUID(text("budget-code")),
            datacenter=text("datacenter"),
            host=text("host"),
            defined_at=datetime.fromisoformat(text("defined-at")),
        )
    except ValueError:
        return None
