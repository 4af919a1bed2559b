"""Alembic environment of the billing service (sees only the ``billing`` schema)."""

from compgrid_billing.adapters.tables import metadata
from compgrid_runtime.migrations import run_env

run_env(metadata)
