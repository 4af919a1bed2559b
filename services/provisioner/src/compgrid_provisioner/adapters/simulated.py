"""Simulated hosts: node descriptions for libvirt's ``test:///`` driver, one file per host.

Each file describes a host's CPUs and memory and a storage pool, so a simulated host takes
the same domain definitions and volumes as a real one. The test driver keeps its state inside
the connection, so on its own a simulated host would forget its domains when the worker exits;
:class:`SavedDomains` keeps each domain's definition and whether it runs beside the node file
(``<host>.domains/``), written whenever the worker changes a domain and loaded again when the
host is next opened, so a restarted worker finds what a real hypervisor would have kept.
Volumes are not kept (the driver stores no contents; a missing one is recreated or skipped).
The driver gives every pool 100 GiB whatever the file says; instance disks are thin overlays
(nothing allocated up front), so a simulated host holds as many as inventory admits.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

_NODE = """<node>
  <cpu>
    <nodes>1</nodes><sockets>{sockets}</sockets><cores>{cores}</cores><threads>{threads}</threads>
    <active>{vcpus}</active><mhz>2400</mhz><model>x86_64</model>
  </cpu>
  <memory>{memory_kib}</memory>
  <pool type='dir'>
    <name>{pool}</name>
    <uuid>{pool_uuid}</uuid>
    <source/>
    <target><path>/simulated/{name}/{pool}</path></target>
  </pool>
</node>
"""


@dataclass(frozen=True)
class SimulatedHost:
    """The size of a simulated host."""

    name: str
    vcpus: int = 64
    memory_mib: int = 256 * 1024


def node_xml(host: SimulatedHost, pool: str) -> str:
    """The test driver's node description of one host."""
    # The driver reports sockets x cores x threads CPUs, so the split must multiply out exactly.
    threads = 2 if host.vcpus % 2 == 0 else 1
    sockets = 2 if host.vcpus % (2 * threads) == 0 else 1
    return _NODE.format(
        name=host.name,
        sockets=sockets,
        cores=host.vcpus // (sockets * threads),
        threads=threads,
        vcpus=host.vcpus,
        memory_kib=host.memory_mib * 1024,
        pool=pool,
        pool_uuid=uuid.uuid5(uuid.NAMESPACE_URL, f"compgrid-sim/{host.name}/{pool}"),
    )


def write_hosts(directory: Path, hosts: list[SimulatedHost], pool: str) -> dict[str, str]:
    """Write one node file per host; return each host's libvirt URI."""
    directory.mkdir(parents=True, exist_ok=True)
    uris: dict[str, str] = {}
    for host in hosts:
        path = (directory / f"{host.name}.xml").resolve()
        path.write_text(node_xml(host, pool))
        uris[host.name] = f"test://{path}"
    return uris


@dataclass(frozen=True)
class SavedDomain:
    """One domain of a simulated host as it was last left: its definition, running or not."""

    xml: str
    running: bool


class SavedDomains:
    """The domains of one simulated host, one JSON file per domain beside its node file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def of(cls, uri: str) -> SavedDomains | None:
        """The saved domains of a ``test:///path/host.xml`` host (None for ``test:///default``)."""
        path = uri.removeprefix("test://")
        if not path.startswith("/") or path == "/default":
            return None
        node = Path(path)
        return cls(node.with_name(f"{node.stem}.domains"))

    def save(self, domain_uuid: str, domain: SavedDomain) -> None:
        """Keep a domain's state (written whole, then renamed: never half a file)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"{domain_uuid}.json"
        partial = final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        partial.write_text(json.dumps({"xml": domain.xml, "running": domain.running}))
        os.replace(partial, final)

    def forget(self, domain_uuid: str) -> None:
        """Drop a domain that no longer exists."""
        (self.directory / f"{domain_uuid}.json").unlink(missing_ok=True)

    def load(self) -> list[SavedDomain]:
        """Every kept domain (a file that does not parse is skipped)."""
        if not self.directory.is_dir():
            return []
        found: list[SavedDomain] = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                found.append(SavedDomain(str(data["xml"]), bool(data["running"])))
            except (OSError, ValueError, KeyError):
                continue
        return found
