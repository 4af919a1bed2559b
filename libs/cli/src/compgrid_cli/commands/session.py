"""Signing in and out: ``login``, ``logout``, ``whoami``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from compgrid_cli import output
from compgrid_cli.commands.common import JsonOpt, api

app = typer.Typer()


@app.command()
def login(
    ctx: typer.Context,
    email: Annotated[
        str | None, typer.Option(help="Your account's email (asked if absent).")
    ] = None,
    password: Annotated[
        str | None, typer.Option(help="Your password (asked without echo if absent).")
    ] = None,
    api_token: Annotated[
        str | None,
        typer.Option(
            "--api-token",
            envvar="COMPGRID_API_TOKEN",
            help="Sign in with an API token (from `POST /me/api-tokens`) instead.",
        ),
    ] = None,
) -> None:
    """Sign in and keep the session in the credentials file (mode 0600)."""
    client = api(ctx)
    if api_token:
        client.sign_in_with_api_token(api_token)
    else:
        email = email or typer.prompt("Email")
        password = password or typer.prompt("Password", hide_input=True)
        client.sign_in(email, password)
    me = client.get("/me")
    output.success(f"signed in to {client.url} as {me['email']}")


@app.command()
def logout(ctx: typer.Context) -> None:
    """Revoke the session's refresh token and forget the session."""
    client = api(ctx)
    if client.sign_out() is None:
        output.note(f"not signed in to {client.url}")
    else:
        output.success(f"signed out of {client.url}")


@app.command()
def whoami(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Show the signed-in account, its roles and projects."""
    client = api(ctx)
    output.show(client.get("/me"), as_json, lambda me: _render_me(client.url, me))


def _render_me(url: str, me: dict[str, Any]) -> None:
    projects = me.get("projects") or {}
    output.fields(
        [
            ("url", url),
            ("email", me["email"]),
            ("name", me.get("display_name")),
            ("id", me["id"]),
            ("roles", me.get("roles")),
            ("status", me.get("status")),
            ("projects", [f"{pid} ({role})" for pid, role in projects.items()]),
        ]
    )
