"""Alembic environment of the metering service (sees only the ``metering`` schema)."""

from compgrid_metering.adapters.tables import metadata
from compgrid_runtime.migrations import run_env

run_env(metadata)
