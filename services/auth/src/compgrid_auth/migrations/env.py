"""Alembic environment of the auth service (sees only the ``auth`` schema)."""

from compgrid_auth.adapters.tables import metadata
from compgrid_runtime.migrations import run_env

run_env(metadata)
