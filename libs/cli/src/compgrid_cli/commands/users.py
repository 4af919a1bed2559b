"""``compgrid users`` (admins): list, create, disable and enable accounts."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from compgrid_cli import output
from compgrid_cli.client import Api
from compgrid_cli.commands.common import AllOpt, JsonOpt, api, is_uuid, usage_error, without_none

app = typer.Typer(help="Accounts (admins).", no_args_is_help=True)


class Role(StrEnum):
    """Platform roles."""

    ADMIN = "admin"
    PI = "pi"
    MEMBER = "member"
    FINANCE = "finance"


UserArg = Annotated[str, typer.Argument(metavar="USER", help="The account's id or email.")]
ReasonOpt = Annotated[str | None, typer.Option(help="Why (kept in the audit log).")]

COLUMNS: list[output.Column] = [
    ("EMAIL", lambda u: u["email"]),
    ("NAME", lambda u: u["display_name"]),
    ("ROLES", lambda u: u.get("roles")),
    ("STATUS", lambda u: output.state(u["status"])),
    ("CREATED", lambda u: output.when(u.get("created_at"))),
    ("ID", lambda u: u["id"]),
]


def resolve_user(client: Api, value: str) -> str:
    """An account id from an id or an email."""
    if is_uuid(value):
        return value
    found = client.pages("/users", {"query": value, "limit": 200}, every=True)["items"]
    exact = [u["id"] for u in found if u["email"].lower() == value.lower()]
    if not exact:
        raise usage_error(f"no account with email {value!r}", field="user")
    return str(exact[0])


def _render(user: dict[str, Any]) -> None:
    output.table([user], COLUMNS)


@app.command("list")
def list_users(
    ctx: typer.Context,
    query: Annotated[str | None, typer.Option(help="Only emails containing this.")] = None,
    status: Annotated[str | None, typer.Option(help="Only accounts in this status.")] = None,
    every: AllOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """List accounts by email."""
    page = api(ctx).pages("/users", {"query": query, "status": status, "limit": 50}, every=every)
    output.show(page, as_json, lambda p: output.table(p["items"], COLUMNS, empty="no accounts"))
    if page["next_cursor"] and not as_json:
        output.note("more accounts: use --all")


@app.command()
def create(
    ctx: typer.Context,
    email: Annotated[str, typer.Option(help="The account's email.")],
    name: Annotated[str, typer.Option(help="The name shown for it.")],
    password: Annotated[
        str | None, typer.Option(help="Its first password (asked without echo if absent).")
    ] = None,
    role: Annotated[
        list[Role] | None, typer.Option(help="A role (repeatable; default member).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an account (admins)."""
    password = password or typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    roles = [r.value for r in role] if role else None
    body = without_none(email=email, display_name=name, password=password, roles=roles)
    output.show(api(ctx).post("/users", body), as_json, _render)


@app.command()
def disable(
    ctx: typer.Context, user: UserArg, reason: ReasonOpt = None, as_json: JsonOpt = False
) -> None:
    """Disable an account: its tokens stop working at once."""
    client = api(ctx)
    changed = client.post(
        f"/users/{resolve_user(client, user)}/disable", without_none(reason=reason)
    )
    output.show(changed, as_json, _render)


@app.command()
def enable(
    ctx: typer.Context, user: UserArg, reason: ReasonOpt = None, as_json: JsonOpt = False
) -> None:
    """Enable a disabled account again."""
    client = api(ctx)
    changed = client.post(
        f"/users/{resolve_user(client, user)}/enable", without_none(reason=reason)
    )
    output.show(changed, as_json, _render)
