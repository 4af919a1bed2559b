"""What the command modules share: the global settings, shared options, and turning what people
type (names, codes, dates, ``k=v`` pairs) into what the API takes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

import typer

from compgrid_cli.client import Api, normalise_url
from compgrid_cli.credentials import CredentialStore
from compgrid_cli.errors import CliError, ExitCode

DEFAULT_URL = "http://127.0.0.1:8000"

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of a table.")]
AllOpt = Annotated[bool, typer.Option("--all", help="Fetch every page, not just the first.")]
LimitOpt = Annotated[int, typer.Option("--limit", min=1, max=500, help="Items per page.")]


@dataclass(frozen=True)
class Settings:
    """The global options."""

    url: str | None
    store: CredentialStore

    def api_url(self) -> str:
        """``--url`` (or ``COMPGRID_URL``), else the URL signed in to last, else the default."""
        return normalise_url(self.url or self.store.current_url() or DEFAULT_URL)


def api(ctx: typer.Context) -> Api:
    """The API client for this command, closed when the command ends."""
    settings = ctx.find_object(Settings)
    if settings is None:
        raise RuntimeError("the compgrid callback did not run")
    return ctx.with_resource(Api(settings.api_url(), settings.store))


def usage_error(message: str, field: str | None = None) -> CliError:
    """A usage error (exit code 2)."""
    return CliError(message, ExitCode.USAGE, code="usage", field=field)


def is_uuid(value: str) -> bool:
    """Whether ``value`` is a UUID (an id rather than a name)."""
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def resolve_project(client: Api, value: str) -> str:
    """A project id from an id or a project name."""
    if is_uuid(value):
        return value
    projects = client.pages("/projects", {"limit": 200}, every=True)["items"]
    found = [p["id"] for p in projects if p.get("name") == value]
    if len(found) != 1:
        what = "no project" if not found else "more than one project"
        raise usage_error(f"{what} named {value!r}", field="project")
    return str(found[0])


def resolve_budget_code(client: Api, value: str, project_id: str | None = None) -> str:
    """A budget code id from an id or its code (within the project, when given)."""
    if is_uuid(value):
        return value
    codes = client.get("/budget-codes", {"project_id": project_id})
    found = [c["id"] for c in codes if c.get("code") == value]
    if len(found) != 1:
        where = " in this project" if project_id else ""
        what = "no budget code" if not found else "more than one budget code"
        raise usage_error(f"{what} {value!r}{where}", field="budget_code")
    return str(found[0])


def moment(value: str | None, option: str) -> str | None:
    """An ISO date or date-time as UTC ISO 8601 (a date means its midnight, UTC)."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise typer.BadParameter(
            "expected a date (2026-11-01) or date-time (2026-11-01T12:00:00Z)", param_hint=option
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return iso(parsed)


def iso(value: datetime) -> str:
    """A date-time as UTC ISO 8601 with ``Z``."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def month_to_date() -> tuple[str, str]:
    """From the start of this month (UTC) to the end of the current hour."""
    now = datetime.now(UTC)
    start = datetime.combine(date(now.year, now.month, 1), datetime.min.time(), UTC)
    end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    return iso(start), iso(end)


def pairs(values: list[str] | None, option: str) -> dict[str, str]:
    """``k=v`` options as a mapping."""
    found: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected key=value, got {item!r}", param_hint=option)
        found[key.strip()] = value.strip()
    return found


def counts(values: list[str] | None, option: str) -> dict[str, int]:
    """``model=count`` options (GPUs) as a mapping."""
    found: dict[str, int] = {}
    for key, value in pairs(values, option).items():
        if not value.isdigit() or int(value) < 1:
            raise typer.BadParameter(f"{key}: expected a positive count", param_hint=option)
        found[key] = int(value)
    return found


def one_of(**chosen: str | None) -> tuple[str, str]:
    """The one selector given (``--instance``, ``--project``...): its name and value."""
    given = [(name, value) for name, value in chosen.items() if value]
    if len(given) != 1:
        options = ", ".join(f"--{name.replace('_', '-')}" for name in chosen)
        raise usage_error(f"give exactly one of {options}")
    return given[0]


def without_none(**values: Any) -> dict[str, Any]:
    """A request body without the options that were not given."""
    return {key: value for key, value in values.items() if value is not None}
