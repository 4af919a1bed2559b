"""Outbox and inbox of the inventory schema.

Revision ID: inventory_0001
Revises:
Create Date: 2026-11-25
"""

from alembic import op

from compgrid_runtime.migrations import create_messaging_tables

revision = "inventory_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_messaging_tables("inventory")


def downgrade() -> None:
    op.drop_table("inbox", schema="inventory")
    op.drop_table("outbox", schema="inventory")
