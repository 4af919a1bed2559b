"""The ``compgrid`` command: global options, exit codes, and the command groups."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from compgrid_cli import output
from compgrid_cli.commands import (
    billing,
    catalog,
    hosts,
    instances,
    invoices,
    money,
    session,
    users,
)
from compgrid_cli.commands.common import DEFAULT_URL, Settings
from compgrid_cli.credentials import CONFIG_DIR_ENV, CredentialStore, config_dir
from compgrid_cli.errors import EXIT_CODE_MEANINGS, CliError

_CODES = "\n".join(f"{int(code)}  {meaning}" for code, meaning in EXIT_CODE_MEANINGS.items())
EPILOG = (
    f"[bold]Exit codes[/bold]\n{_CODES}\n"
    "Errors go to stderr as 'error: <detail> (<code>)'.\n\n"
    "[bold]Environment[/bold]\n"
    "COMPGRID_URL         the platform's URL (like --url)\n"
    f"{CONFIG_DIR_ENV}  where credentials.json is kept (default: {config_dir()})\n"
    "COMPGRID_API_TOKEN   an API token for `compgrid login`"
)


class _Compgrid(typer.Typer):
    """The ``compgrid`` application: a ``CliError`` anywhere ends the run with its exit code."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except CliError as exc:
            output.error(exc)
            sys.exit(int(exc.exit_code))


app = _Compgrid(
    name="compgrid",
    help="The command line for CompGrid: instances, usage, costs, invoices and the cluster.",
    epilog=EPILOG,
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            envvar="COMPGRID_URL",
            help=f"The platform's URL (default: the one signed in to last, else {DEFAULT_URL}).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Keep the global options for the commands."""
    ctx.obj = Settings(url=url, store=CredentialStore(config_dir()))


app.add_typer(session.app)
app.add_typer(instances.app, name="instances")
app.add_typer(money.app)
app.add_typer(invoices.app, name="invoices")
app.add_typer(hosts.app, name="hosts")
app.add_typer(catalog.types_app, name="types")
app.add_typer(catalog.prices_app, name="prices")
app.add_typer(users.app, name="users")
app.add_typer(billing.app, name="billing")
