"""``compgrid-provisioner``: run the worker of one datacenter, or write simulated hosts.

``compgrid-provisioner [--datacenter NAME]`` runs until SIGTERM or SIGINT (the datacenter may
also come from ``COMPGRID_PROVISIONER_DATACENTER``).

``compgrid-provisioner simulate-hosts --count N --dir DIR`` writes N node descriptions for
libvirt's test driver and prints ``name uri`` per line.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from compgrid_provisioner.adapters.simulated import SimulatedHost, write_hosts
from compgrid_provisioner.bootstrap import bootstrap
from compgrid_provisioner.config import Settings
from compgrid_runtime.app import run_service


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run."""
    parser = argparse.ArgumentParser(prog="compgrid-provisioner")
    parser.add_argument("--datacenter", help="the datacenter this worker serves")
    commands = parser.add_subparsers(dest="command")
    sim = commands.add_parser("simulate-hosts", help="write node files for the test driver")
    sim.add_argument("--count", type=int, required=True)
    sim.add_argument("--dir", type=Path, required=True)
    sim.add_argument("--prefix", default="sim-host-")
    sim.add_argument("--vcpus", type=int, default=64)
    sim.add_argument("--memory-mib", type=int, default=256 * 1024)
    args = parser.parse_args(argv)
    if args.command == "simulate-hosts":
        if args.count < 1:
            parser.error("--count must be at least 1")
        hosts = [
            SimulatedHost(f"{args.prefix}{i:02d}", vcpus=args.vcpus, memory_mib=args.memory_mib)
            for i in range(1, args.count + 1)
        ]
        for name, uri in write_hosts(
            args.dir, hosts, Settings.model_fields["storage_pool"].default
        ).items():
            print(name, uri)
        return
    if args.datacenter:
        os.environ["COMPGRID_PROVISIONER_DATACENTER"] = args.datacenter
    run_service(bootstrap)


if __name__ == "__main__":
    main()
