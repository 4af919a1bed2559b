"""Outbox and inbox of the auth schema.

Revision ID: auth_0001
Revises:
Create Date: 2026-11-25
"""

from alembic import op

from compgrid_runtime.migrations import create_messaging_tables

revision = "auth_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_messaging_tables("auth")


def downgrade() -> None:
    op.drop_table("inbox", schema="auth")
    op.drop_table("outbox", schema="auth")
