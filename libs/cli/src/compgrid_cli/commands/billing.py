"""``compgrid billing``: invoice a closed period, and list the billing runs."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from compgrid_cli import output
from compgrid_cli.commands.common import JsonOpt, api, moment

app = typer.Typer(help="Billing runs (admins and finance).", no_args_is_help=True)

COLUMNS: list[output.Column] = [
    ("PERIOD", lambda r: f"{output.when(r['period_start'])} to {output.when(r['period_end'])}"),
    ("STATE", lambda r: output.state(r["state"])),
    ("INVOICES", lambda r: r["invoices"]),
    ("STARTED BY", lambda r: r["started_by"]),
    ("STARTED", lambda r: output.when(r["started_at"])),
    ("FINISHED", lambda r: output.when(r.get("finished_at"))),
    ("ID", lambda r: r["run_id"]),
]


def _render_run(run: dict[str, Any]) -> None:
    output.table([run], [*COLUMNS[:3], ("ISSUED NOW", lambda r: r["issued_now"]), *COLUMNS[3:]])


@app.command()
def run(
    ctx: typer.Context,
    period_start: Annotated[
        str, typer.Option("--from", help="Start of the period (date or date-time, UTC).")
    ],
    period_end: Annotated[str, typer.Option("--to", help="End of the period, excluded.")],
    as_json: JsonOpt = False,
) -> None:
    """Invoice a closed period now; running it again issues nothing twice (admins)."""
    body = {
        "period_start": moment(period_start, "--from"),
        "period_end": moment(period_end, "--to"),
    }
    output.show(api(ctx).post("/billing/runs", body), as_json, _render_run)


@app.command()
def runs(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List billing runs, newest period first."""
    found = api(ctx).get("/billing/runs")
    output.show(found, as_json, lambda r: output.table(r["runs"], COLUMNS, empty="no runs yet"))
