"""What commands print: rich tables for people, the API's JSON as it came for scripts
(``--json``), and errors, notes and progress on stderr so that stdout stays parseable.

Values from the API are printed as plain text, never as rich markup.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from compgrid_cli.errors import CliError


def _console(*, stderr: bool) -> Console:
    """A console; into a pipe or file (and no COLUMNS set) tables are never folded."""
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = UNFOLDED_WIDTH
    return console


UNFOLDED_WIDTH = 1000
NO_WRAP = frozenset({"ID", "NAME", "EMAIL", "NUMBER"})
"""Columns people copy from: never folded."""
stdout = _console(stderr=False)
stderr = _console(stderr=True)

Row = Mapping[str, Any]
Column = tuple[str, Callable[[Row], Any]]
"""A table column: its heading and how to get its cell from a row."""

STATE_STYLES = {
    "running": "green",
    "active": "green",
    "completed": "green",
    "stopped": "yellow",
    "maintenance": "yellow",
    "pending_approval": "yellow",
    "disabled": "yellow",
    "failed": "red",
    "rejected": "red",
    "down": "red",
    "deleted": "dim",
}


def print_json(data: Any) -> None:
    """Print the API's JSON, indented."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def show(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    """Print ``data`` as JSON for scripts, else the way ``render`` shows it to people."""
    if as_json:
        print_json(data)
    else:
        render(data)


def table(
    rows: Iterable[Row],
    columns: Sequence[Column],
    *,
    title: str | None = None,
    empty: str | None = "nothing found",
) -> None:
    """Print rows as a table (or say ``empty`` on stderr when there are none)."""
    found = list(rows)
    if not found:
        if empty:
            note(empty)
        return
    grid = Table(title=title, box=box.SIMPLE_HEAD, header_style="bold", title_justify="left")
    for heading, _ in columns:
        grid.add_column(heading, overflow="fold", no_wrap=heading in NO_WRAP)
    for row in found:
        grid.add_row(*(text(cell(row)) for _, cell in columns))
    stdout.print(grid)


def fields(pairs: Iterable[tuple[str, Any]], *, title: str | None = None) -> None:
    """Print one resource as name/value lines."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for name, value in pairs:
        grid.add_row(name, text(value))
    if title:
        stdout.print(Text(title, style="bold underline"))
    stdout.print(grid)


def text(value: Any) -> Text:
    """A cell: ``-`` for nothing, ``k=v`` pairs for mappings, commas between list items."""
    if isinstance(value, Text):
        return value
    if value is None or value == "":
        return Text("-", style="dim")
    if isinstance(value, bool):
        return Text("yes" if value else "no")
    if isinstance(value, Mapping):
        return Text(", ".join(f"{k}={v}" for k, v in value.items()) or "-")
    if isinstance(value, list | tuple):
        return Text(", ".join(str(v) for v in value) or "-")
    return Text(str(value))


def money(value: Mapping[str, Any] | None) -> str:
    """``{amount, currency}`` as ``12.50 EUR``."""
    if not value:
        return "-"
    return amount(value.get("amount"), value.get("currency"))


def amount(value: Any, currency: Any = None) -> str:
    """An amount with its currency."""
    if value is None:
        return "-"
    return f"{value} {currency}" if currency else str(value)


def when(value: Any) -> str:
    """A timestamp from the API, to the second, in UTC."""
    if not value:
        return "-"
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    return moment.strftime("%Y-%m-%d %H:%M:%S") + (
        " UTC" if moment.utcoffset() == timedelta(0) else ""
    )


def state(value: Any) -> Text:
    """A state, coloured by what it means."""
    name = str(value or "-")
    return Text(name, style=STATE_STYLES.get(name, ""))


def note(message: str) -> None:
    """Tell the user something that is not the command's output (stderr)."""
    stderr.print(Text(message, style="dim"))


def success(message: str) -> None:
    """Say that a change was made."""
    stdout.print(Text(message, style="green"))


def error(exc: CliError) -> None:
    """Print a failure as ``error: <detail> (<code>)`` on stderr."""
    stderr.print(Text(f"error: {exc}", style="red"), soft_wrap=True)


@contextmanager
def following(label: str) -> Iterator[Callable[[str], None]]:
    """Progress on stderr: a live spinner on a terminal, else one line per update."""
    if stderr.is_terminal:
        with stderr.status(Text(label)) as status:
            yield lambda message: status.update(Text(f"{label}: {message}"))
    else:
        yield lambda message: stderr.print(Text(f"{label}: {message}"), soft_wrap=True)
