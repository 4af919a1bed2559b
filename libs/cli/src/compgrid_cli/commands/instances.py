"""``compgrid instances``: request, list, show, start, stop, reboot, delete, approve, deny.

Commands answer at once with the instance as it is then (the API answers 202); with ``--wait``
they follow the instance's event stream until it reaches the state the command aims at
(``running`` for request, start and reboot, ``stopped`` for stop, ``deleted`` for delete).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from compgrid_cli import output, sse
from compgrid_cli.client import Api
from compgrid_cli.commands.common import (
    AllOpt,
    JsonOpt,
    LimitOpt,
    api,
    iso,
    moment,
    resolve_project,
    usage_error,
    without_none,
)
from compgrid_events.inventory import InstanceState as State

app = typer.Typer(help="Request and run instances.", no_args_is_help=True)


IdArg = Annotated[str, typer.Argument(metavar="ID", help="The instance's id.")]
WaitOpt = Annotated[
    bool, typer.Option("--wait", help="Follow the instance until the command's end state.")
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", min=1, help="Seconds to wait at most with --wait.")
]

COLUMNS: list[output.Column] = [
    ("ID", lambda i: i["id"]),
    ("NAME", lambda i: i["name"]),
    ("STATE", lambda i: output.state(i["state"])),
    ("TYPE", lambda i: i["instance_type"]),
    ("IMAGE", lambda i: i["image"]),
    ("HOST", lambda i: i.get("host")),
    ("PRICE/H", lambda i: output.money(i.get("hourly_price"))),
    ("CREATED", lambda i: output.when(i.get("created_at"))),
]


def render(instance: dict[str, Any]) -> None:
    """Show one instance."""
    reason = instance.get("reason")
    output.fields(
        [
            ("id", instance["id"]),
            ("name", instance["name"]),
            ("state", output.state(instance["state"])),
            ("reason", f"{reason} ({instance.get('reason_code')})" if reason else None),
            ("type", instance["instance_type"]),
            ("size", _size(instance)),
            ("image", instance["image"]),
            ("price per hour", output.money(instance.get("hourly_price"))),
            ("project", instance["project_id"]),
            ("budget code", instance["budget_code_id"]),
            ("datacenter", instance.get("datacenter")),
            ("host", instance.get("host")),
            ("addresses", instance.get("addresses")),
            ("lease ends", output.when(instance.get("lease_ends_at"))),
            ("budget hold", _hold(instance.get("hold"))),
            ("created", output.when(instance.get("created_at"))),
            ("updated", output.when(instance.get("updated_at"))),
        ]
    )


def _hold(hold: dict[str, Any] | None) -> str | None:
    """What admission set aside on the budget code, and for how long."""
    if not hold:
        return None
    hours = f"{float(hold['hours']):g}"
    return f"{output.money(hold['amount'])} for {hours} h, until {output.when(hold['until'])}"


_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def lease_end(value: str | None) -> str | None:
    """``--lease``: a duration from now (``90m``, ``8h``, ``2d``, ``1w``) or an end time."""
    if value is None:
        return None
    span = _SPAN.match(value.lower())
    if span is None:
        try:
            return moment(value, "--lease")
        except typer.BadParameter:
            raise typer.BadParameter(
                "expected a duration (8h, 2d, 90m, 1w) or an end time (2026-12-24T18:00:00Z)",
                param_hint="--lease",
            ) from None
    seconds = float(span.group(1)) * _UNIT_S[span.group(2)]
    if seconds <= 0:
        raise typer.BadParameter("a lease must last longer than nothing", param_hint="--lease")
    return iso(datetime.now(UTC) + timedelta(seconds=seconds))


def _size(instance: dict[str, Any]) -> str:
    size = f"{instance['vcpus']} vCPU, {instance['memory_mib']} MiB, {instance['disk_gib']} GiB"
    gpus = ", ".join(f"{n} {model}" for model, n in (instance.get("gpus") or {}).items())
    return f"{size}, {gpus}" if gpus else size


def finish(
    client: Api,
    instance: dict[str, Any],
    *,
    as_json: bool,
    wait: frozenset[str] | None,
    timeout_s: float,
) -> None:
    """Print the instance, after following it into one of the ``wait`` states if given."""
    if wait:
        label = f"instance {instance['name']}"
        with output.following(label) as update:
            sse.wait_for(
                client,
                str(instance["id"]),
                wait,
                timeout_s=timeout_s,
                on_change=lambda c: update(f"{c.state} {c.reason}".strip()),
            )
        instance = client.get(f"/instances/{instance['id']}")
    output.show(instance, as_json, render)


@app.command("list")
def list_instances(
    ctx: typer.Context,
    project: Annotated[str | None, typer.Option(help="Project id or name.")] = None,
    state: Annotated[State | None, typer.Option(help="Only instances in this state.")] = None,
    mine: Annotated[bool, typer.Option("--mine", help="Only instances you requested.")] = False,
    every: AllOpt = False,
    limit: LimitOpt = 50,
    as_json: JsonOpt = False,
) -> None:
    """List the instances you may see, newest first."""
    client = api(ctx)
    params = {
        "project_id": resolve_project(client, project) if project else None,
        "state": state.value if state else None,
        "mine": mine or None,
        "limit": limit,
    }
    page = client.pages("/instances", params, every=every)
    output.show(page, as_json, lambda p: output.table(p["items"], COLUMNS, empty="no instances"))
    if page["next_cursor"] and not as_json:
        output.note("more instances: use --all")


@app.command()
def request(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The instance's name.")],
    instance_type: Annotated[str, typer.Option("--type", help="Instance type name or id.")],
    image: Annotated[str, typer.Option(help="Image name or id.")],
    project: Annotated[str, typer.Option(help="Project id or name.")],
    budget_code: Annotated[str, typer.Option(help="Budget code id or code, e.g. GRANT-1.")],
    datacenter: Annotated[str | None, typer.Option(help="Datacenter to place it in.")] = None,
    lease: Annotated[
        str | None,
        typer.Option(
            help="How long you need it: a duration (8h, 2d, 90m, 1w) or an end time "
            "(2026-12-24T18:00Z). Without it the project's default lease applies; the budget "
            "hold covers the lease, at most the admission horizon (24 h by default)."
        ),
    ] = None,
    ssh_key: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, readable=True, help="SSH public key file."),
    ] = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 600,
    as_json: JsonOpt = False,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            help="Reuse this key when re-running after a time-out: the platform answers with "
            "the instance the first run created instead of creating another."
        ),
    ] = None,
) -> None:
    """Ask for an instance; it is placed and started, or waits for the PI's approval."""
    client = api(ctx)
    project_id = resolve_project(client, project)
    body = without_none(
        name=name,
        project_id=project_id,
        budget_code_id=budget_code,  # the API takes the id or the code
        instance_type=instance_type,
        image=image,
        datacenter=datacenter,
        ssh_public_key=_read_key(ssh_key) if ssh_key else None,
        lease_ends_at=lease_end(lease),
    )
    instance = client.post("/instances", body, key=idempotency_key)
    if wait and instance["state"] == State.PENDING_APPROVAL:
        output.note("the request waits for the project PI's approval")
    finish(client, instance, as_json=as_json, wait=_goal(wait, "running"), timeout_s=timeout)


def _read_key(path: Path) -> str:
    key = path.read_text(encoding="utf-8").strip()
    if not key:
        raise usage_error(f"{path} is empty", field="ssh_key")
    return key


def _goal(wait: bool, target: str) -> frozenset[str] | None:
    return frozenset({target}) if wait else None


@app.command()
def show(
    ctx: typer.Context,
    instance_id: IdArg,
    wait: Annotated[
        bool, typer.Option("--wait", help="First wait until the instance is no longer in flux.")
    ] = False,
    timeout: TimeoutOpt = 600,
    as_json: JsonOpt = False,
) -> None:
    """Show one instance."""
    client = api(ctx)
    instance = client.get(f"/instances/{instance_id}")
    settled = sse.SETTLED_STATES - sse.FAILED_STATES if wait else None
    finish(client, instance, as_json=as_json, wait=settled, timeout_s=timeout)


LIFECYCLE = (
    ("start", "running", "Start a stopped instance (--wait: until running)."),
    (
        "stop",
        "stopped",
        "Stop a running instance; its disk stays, and is charged (--wait: until stopped).",
    ),
    ("reboot", "running", "Reboot a running instance (it stays running throughout)."),
    ("delete", "deleted", "Delete an instance and its disk (--wait: until deleted)."),
)


def _lifecycle(action: str, goal: str, doc: str) -> None:
    """Register ``instances <action> ID [--wait]``: one command per lifecycle action."""

    def command(
        ctx: typer.Context,
        instance_id: IdArg,
        wait: WaitOpt = False,
        timeout: TimeoutOpt = 600,
        as_json: JsonOpt = False,
    ) -> None:
        client = api(ctx)
        if action == "delete":
            instance = client.delete(f"/instances/{instance_id}")
        else:
            instance = client.post(f"/instances/{instance_id}/{action}")
        finish(client, instance, as_json=as_json, wait=_goal(wait, goal), timeout_s=timeout)

    command.__doc__ = doc
    app.command(action)(command)


for _action, _goal_state, _doc in LIFECYCLE:
    _lifecycle(_action, _goal_state, _doc)


@app.command()
def approve(
    ctx: typer.Context,
    instance_id: IdArg,
    reason: Annotated[str | None, typer.Option(help="A note for the requester.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Approve a request waiting for you as the project's PI."""
    client = api(ctx)
    instance = client.post(f"/instances/{instance_id}/approve", without_none(reason=reason))
    output.show(instance, as_json, render)


@app.command()
def deny(
    ctx: typer.Context,
    instance_id: IdArg,
    reason: Annotated[str, typer.Option(help="Why; the requester reads it.")],
    as_json: JsonOpt = False,
) -> None:
    """Deny a request waiting for you as the project's PI."""
    client = api(ctx)
    instance = client.post(f"/instances/{instance_id}/deny", {"reason": reason})
    output.show(instance, as_json, render)
