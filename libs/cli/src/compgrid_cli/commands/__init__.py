"""The command groups of ``compgrid``, one module per area."""
