"""``compgrid hosts`` (admins): list, show, add, and take hosts in and out of maintenance.

A change reads the host first and sends its ETag as ``If-Match``: when someone else changed the
host in between, the API refuses (412) and the command fails with exit code 1 instead of
overwriting their change.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from compgrid_cli import output
from compgrid_cli.client import Api
from compgrid_cli.commands.common import (
    AllOpt,
    JsonOpt,
    api,
    counts,
    is_uuid,
    pairs,
    usage_error,
    without_none,
)

app = typer.Typer(help="Hypervisor hosts (admins).", no_args_is_help=True)


class HostState(StrEnum):
    """Whether a host takes new work."""

    ACTIVE = "active"
    MAINTENANCE = "maintenance"
    DOWN = "down"


HostArg = Annotated[str, typer.Argument(metavar="HOST", help="The host's id or name.")]

COLUMNS: list[output.Column] = [
    ("NAME", lambda h: h["name"]),
    ("DATACENTER", lambda h: h["datacenter"]),
    ("STATE", lambda h: output.state(h["state"])),
    ("VCPUS", lambda h: f"{h['claimed_vcpus']}/{h['vcpus']}"),
    ("MEMORY MIB", lambda h: f"{h['claimed_memory_mib']}/{h['memory_mib']}"),
    ("DISK GIB", lambda h: f"{h['claimed_disk_gib']}/{h['disk_gib']}"),
    ("GPUS", lambda h: h.get("gpus")),
    ("INSTANCES", lambda h: h.get("instances")),
    ("ID", lambda h: h["id"]),
]


def render(host: dict[str, Any]) -> None:
    """Show one host."""
    output.fields(
        [
            ("id", host["id"]),
            ("name", host["name"]),
            ("datacenter", host["datacenter"]),
            ("state", output.state(host["state"])),
            ("libvirt URI", host["libvirt_uri"]),
            ("vCPUs claimed", f"{host['claimed_vcpus']} of {host['vcpus']}"),
            ("memory claimed", f"{host['claimed_memory_mib']} of {host['memory_mib']} MiB"),
            ("disk claimed", f"{host['claimed_disk_gib']} of {host['disk_gib']} GiB"),
            ("GPUs", host.get("gpus")),
            ("GPUs claimed", host.get("claimed_gpus")),
            ("overcommit", f"CPU {host['cpu_overcommit']}, memory {host['memory_overcommit']}"),
            ("labels", host.get("labels")),
            ("instances", host.get("instances")),
            ("version", host["version"]),
        ]
    )


def resolve_host(client: Api, value: str) -> str:
    """A host id from an id or a host name."""
    if is_uuid(value):
        return value
    hosts = client.pages("/hosts", {"limit": 500}, every=True)["items"]
    found = [h["id"] for h in hosts if h["name"] == value]
    if len(found) != 1:
        raise usage_error(
            f"{'no host' if not found else 'more than one host'} named {value!r}", field="host"
        )
    return str(found[0])


@app.command("list")
def list_hosts(
    ctx: typer.Context,
    datacenter: Annotated[str | None, typer.Option(help="Only this datacenter's hosts.")] = None,
    state: Annotated[HostState | None, typer.Option(help="Only hosts in this state.")] = None,
    every: AllOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """List hosts with their capacity and what is claimed on them."""
    params = {"datacenter": datacenter, "state": state.value if state else None, "limit": 100}
    page = api(ctx).pages("/hosts", params, every=every)
    output.show(page, as_json, lambda p: output.table(p["items"], COLUMNS, empty="no hosts"))
    if page["next_cursor"] and not as_json:
        output.note("more hosts: use --all")


@app.command()
def show(ctx: typer.Context, host: HostArg, as_json: JsonOpt = False) -> None:
    """Show one host."""
    client = api(ctx)
    output.show(client.get(f"/hosts/{resolve_host(client, host)}"), as_json, render)


@app.command()
def add(
    ctx: typer.Context,
    datacenter: Annotated[str, typer.Option(help="The datacenter it joins.")],
    name: Annotated[str, typer.Option(help="The host's name.")],
    uri: Annotated[str, typer.Option(help="Its libvirt URI, e.g. qemu+ssh://host/system.")],
    vcpus: Annotated[int, typer.Option(min=1, help="Physical vCPUs.")],
    memory_mib: Annotated[int, typer.Option(min=1, help="Memory in MiB.")],
    disk_gib: Annotated[int, typer.Option(min=0, help="Disk in GiB.")],
    label: Annotated[list[str] | None, typer.Option(help="A label k=v (repeatable).")] = None,
    gpu: Annotated[list[str] | None, typer.Option(help="GPUs model=count (repeatable).")] = None,
    maintenance: Annotated[
        bool, typer.Option("--maintenance", help="Add it in maintenance (takes no work yet).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Register a hypervisor host in a datacenter."""
    body = without_none(
        datacenter=datacenter,
        name=name,
        libvirt_uri=uri,
        vcpus=vcpus,
        memory_mib=memory_mib,
        disk_gib=disk_gib,
        labels=pairs(label, "--label"),
        gpus=counts(gpu, "--gpu"),
        state=HostState.MAINTENANCE.value if maintenance else None,
    )
    output.show(api(ctx).post("/hosts", body), as_json, render)


@app.command()
def maintenance(
    ctx: typer.Context,
    host: HostArg,
    off: Annotated[bool, typer.Option("--off", help="End maintenance: active again.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Put a host in maintenance (it takes no new instances), or back to active with --off."""
    client = api(ctx)
    path = f"/hosts/{resolve_host(client, host)}"
    etag = client.request("GET", path).headers.get("ETag")
    target = HostState.ACTIVE if off else HostState.MAINTENANCE
    changed = client.patch(path, {"state": target.value}, if_match=etag)
    output.show(changed, as_json, lambda h: output.success(f"host {h['name']} is {h['state']}"))
