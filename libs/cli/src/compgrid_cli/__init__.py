"""``compgrid``: the command line for CompGrid's REST API."""
