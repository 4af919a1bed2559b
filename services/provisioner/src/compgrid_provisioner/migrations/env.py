"""Alembic environment of the provisioner service (sees only the ``provisioner`` schema)."""

from compgrid_provisioner.adapters.tables import metadata
from compgrid_runtime.migrations import run_env

run_env(metadata)
