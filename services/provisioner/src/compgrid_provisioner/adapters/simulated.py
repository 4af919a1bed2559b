"""Simulated hosts: node descriptions for libvirt's ``test:///`` driver, one file per host.

Each file describes a host's CPUs and memory and a storage pool, so a simulated host takes
the same domain definitions and volumes as a real one. The test driver keeps its state inside
the connection, so a simulated host's domains live as long as the worker process that opened
it: good for demos and scale runs, not for crash-recovery tests (those use real QEMU).
The driver gives every pool 100 GiB whatever the file says; instance disks are thin overlays
(nothing allocated up front), so a simulated host holds as many as inventory admits.
"""

from __future__ import annotations

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
