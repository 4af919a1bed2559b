"""What running costs: ``usage``, ``costs`` and ``budgets``.

Usage is measured (resource-seconds, hour by hour); costs are usage priced by billing. For one
instance, ``costs`` adds an estimate for the hours billing has not priced yet.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

import typer

from compgrid_cli import output
from compgrid_cli.client import Api
from compgrid_cli.commands.common import (
    JsonOpt,
    api,
    moment,
    month_to_date,
    one_of,
    resolve_budget_code,
    resolve_project,
)

app = typer.Typer()

InstanceOpt = Annotated[str | None, typer.Option("--instance", help="An instance id.")]
ProjectOpt = Annotated[str | None, typer.Option("--project", help="A project id or name.")]
CodeOpt = Annotated[str | None, typer.Option("--budget-code", help="A budget code id or code.")]
SinceOpt = Annotated[str | None, typer.Option("--since", help="From (date or date-time, UTC).")]
UntilOpt = Annotated[str | None, typer.Option("--until", help="Until, excluded.")]

HOURS = Decimal(3600)


def _subject(
    client: Api, instance: str | None, project: str | None, code: str | None
) -> tuple[str, str]:
    """``(of, id)`` for the one selector given."""
    of, value = one_of(instance=instance, project=project, budget_code=code)
    if of == "project":
        return of, resolve_project(client, value)
    if of == "budget_code":
        return of, resolve_budget_code(client, value)
    return of, value


def _hours(seconds: Any) -> str:
    return f"{(Decimal(str(seconds or 0)) / HOURS).quantize(Decimal('0.001'))}"


@app.command()
def usage(
    ctx: typer.Context,
    instance: InstanceOpt = None,
    project: ProjectOpt = None,
    budget_code: CodeOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Measured usage hour by hour (default: the last 24 hours)."""
    client = api(ctx)
    of, subject = _subject(client, instance, project, budget_code)
    params = {"of": of, "id": subject, "since": moment(since, "--since")}
    report = client.get("/usage", {**params, "until": moment(until, "--until")})
    output.show(report, as_json, _render_usage)


_USAGE_COLUMNS: list[output.Column] = [
    ("HOUR", lambda h: output.when(h.get("hour_start"))),
    ("RUNNING H", lambda h: _hours(h.get("running_seconds"))),
    ("VCPU H", lambda h: _hours(h.get("vcpu_seconds"))),
    ("MEMORY GIB H", lambda h: _hours(h.get("memory_gib_seconds"))),
    ("CPU TIME H", lambda h: _hours(h.get("cpu_time_seconds"))),
    ("GPU H", lambda h: {m: _hours(s) for m, s in (h.get("gpu_seconds") or {}).items()}),
    ("CLOSED", lambda h: h.get("closed")),
]


def _render_usage(report: dict[str, Any]) -> None:
    window = f"{output.when(report['since'])} to {output.when(report['until'])}"
    title = f"usage of {report['of'].replace('_', ' ')} {report['id']}, {window}"
    output.table(report["hours"], _USAGE_COLUMNS, title=title, empty="no usage in this window")
    total = report.get("total") or {}
    output.fields(
        [
            ("running hours", _hours(total.get("running_seconds"))),
            ("vCPU hours", _hours(total.get("vcpu_seconds"))),
            ("memory GiB hours", _hours(total.get("memory_gib_seconds"))),
            ("CPU time hours", _hours(total.get("cpu_time_seconds"))),
        ],
        title="total",
    )


@app.command()
def costs(
    ctx: typer.Context,
    instance: InstanceOpt = None,
    project: ProjectOpt = None,
    budget_code: CodeOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Costs of an instance so far (charged + estimate), or of a project or budget code.

    For a project or budget code: the charges from --since to --until (default: this month).
    """
    client = api(ctx)
    of, subject = _subject(client, instance, project, budget_code)
    if of == "instance":
        output.show(client.get(f"/instances/{subject}/costs"), as_json, _render_instance_costs)
        return
    start, end = month_to_date()
    window = {"since": moment(since, "--since") or start, "until": moment(until, "--until") or end}
    report = client.get("/costs", {"of": of, "id": subject, **window})
    output.show(report, as_json, _render_costs)


_RESOURCE_COLUMNS: list[output.Column] = [
    ("RESOURCE", lambda r: f"{r['resource']} {r.get('model') or ''}".strip()),
    ("QUANTITY", lambda r: f"{r['quantity']} {r['unit']}"),
    ("AMOUNT", lambda r: r["amount"]),
]


def _render_instance_costs(costs: dict[str, Any]) -> None:
    currency = costs["currency"]
    output.fields(
        [
            ("instance", costs["instance_id"]),
            ("price per hour", output.money(costs.get("hourly_price"))),
            ("charged", output.amount(costs["charged"], currency)),
            ("not yet priced", f"{_hours(costs['unrated_running_seconds'])} running hours"),
            ("estimate for them", output.amount(costs["estimated_unrated"], currency)),
            ("estimated total", output.amount(costs["estimated_total"], currency)),
        ]
    )
    output.table(costs.get("resources") or [], _RESOURCE_COLUMNS, empty="nothing charged yet")


def _render_costs(report: dict[str, Any]) -> None:
    currency = report.get("currency")
    output.fields(
        [
            (report["of"].replace("_", " "), report["id"]),
            ("window", f"{output.when(report['since'])} to {output.when(report['until'])}"),
            ("total", output.amount(report["total"], currency)),
        ]
    )
    output.table(report.get("resources") or [], _RESOURCE_COLUMNS, empty="nothing charged")
    days: list[output.Column] = [("DAY", lambda d: d["day"]), ("AMOUNT", lambda d: d["amount"])]
    output.table(report.get("days") or [], days, empty=None)


_BUDGET_COLUMNS: list[output.Column] = [
    ("CODE", lambda b: b["code"]),
    ("NAME", lambda b: b["name"]),
    ("STATE", lambda b: output.state(b.get("state"))),
    ("FUNDING", lambda b: output.money(b["funding"])),
    ("CHARGED", lambda b: output.money(b["charged"])),
    ("HELD", lambda b: output.money(b["held"])),
    ("AVAILABLE", lambda b: output.money(b["available"])),
    ("SPENT %", lambda b: b["spent_percent"]),
    ("BURN/DAY", lambda b: output.money(b["burn_per_day"])),
    ("RUNS OUT", lambda b: b.get("runs_out_on")),
    ("VALID", lambda b: f"{b['valid_from']} to {b['valid_to']}"),
]


@app.command()
def budgets(ctx: typer.Context, project: ProjectOpt = None, as_json: JsonOpt = False) -> None:
    """Budget codes with funding, charges, holds, what is left and when it runs out."""
    client = api(ctx)
    project_id = resolve_project(client, project) if project else None
    output.show(client.get("/budgets", {"project_id": project_id}), as_json, _render_budgets)


def _render_budgets(found: dict[str, Any]) -> None:
    output.table(found["budgets"], _BUDGET_COLUMNS, empty="no budget codes")
