"""``compgrid invoices``: list invoices and download them as PDF or CSV."""

from __future__ import annotations

import re
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from compgrid_cli import output
from compgrid_cli.commands.common import (
    JsonOpt,
    api,
    resolve_budget_code,
    resolve_project,
    usage_error,
)

app = typer.Typer(help="Invoices: list and download.", no_args_is_help=True)


class Format(StrEnum):
    """What an invoice can be downloaded as."""

    PDF = "pdf"
    CSV = "csv"


COLUMNS: list[output.Column] = [
    ("NUMBER", lambda i: i["number"]),
    ("ID", lambda i: i["invoice_id"]),
    ("PROJECT", lambda i: i["project_name"]),
    ("BUDGET CODE", lambda i: i["budget_code"]),
    ("PERIOD", lambda i: f"{i['period_start'][:10]} to {i['period_end'][:10]}"),
    ("TOTAL", lambda i: output.amount(i["total"], i["currency"])),
    ("ISSUED", lambda i: output.when(i["issued_at"])),
]
_FILENAME = re.compile(r'filename="?([^";]+)"?')


@app.command("list")
def list_invoices(
    ctx: typer.Context,
    project: Annotated[str | None, typer.Option(help="Project id or name.")] = None,
    budget_code: Annotated[str | None, typer.Option(help="Budget code id or code.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many.")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Invoices, newest first (every project's, for admins and finance)."""
    client = api(ctx)
    project_id = resolve_project(client, project) if project else None
    params: dict[str, Any] = {"project_id": project_id, "limit": limit}
    if budget_code:
        params["budget_code_id"] = resolve_budget_code(client, budget_code, project_id)
    found = client.get("/invoices", params)
    output.show(
        found, as_json, lambda data: output.table(data["invoices"], COLUMNS, empty="no invoices")
    )


@app.command()
def download(
    ctx: typer.Context,
    invoice_id: Annotated[str, typer.Argument(metavar="ID", help="The invoice's id.")],
    file_format: Annotated[Format, typer.Option("--format", help="PDF or CSV.")] = Format.PDF,
    destination: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File to write ('-': stdout; default: its name)."),
    ] = None,
) -> None:
    """Download an invoice as PDF (or its lines as CSV)."""
    response = api(ctx).request("GET", f"/invoices/{invoice_id}/{file_format.value}")
    if destination == Path("-"):
        sys.stdout.buffer.write(response.content)
        sys.stdout.buffer.flush()
        return
    target = destination or Path(
        _filename(response.headers.get("Content-Disposition"), invoice_id, file_format)
    )
    if target.is_dir():
        target = target / _filename(
            response.headers.get("Content-Disposition"), invoice_id, file_format
        )
    try:
        target.write_bytes(response.content)
    except OSError as exc:
        raise usage_error(f"cannot write {target}: {exc.strerror}", field="output") from None
    output.success(f"wrote {target} ({len(response.content)} bytes)")


def _filename(disposition: str | None, invoice_id: str, file_format: Format) -> str:
    """The server's file name (without any directory part), else one from the id."""
    found = _FILENAME.search(disposition or "")
    name = Path(found.group(1)).name if found else ""
    return name if name and not name.startswith(".") else f"invoice-{invoice_id}.{file_format}"
