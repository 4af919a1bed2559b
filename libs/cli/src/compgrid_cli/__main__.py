"""``python -m compgrid_cli``: the ``compgrid`` command."""

from compgrid_cli.main import app

app(prog_name="compgrid")
