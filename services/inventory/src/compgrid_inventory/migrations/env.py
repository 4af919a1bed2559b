"""Alembic environment of the inventory service (sees only the ``inventory`` schema)."""

from compgrid_inventory.adapters.tables import metadata
from compgrid_runtime.migrations import run_env

run_env(metadata)
