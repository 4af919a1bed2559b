"""provisioner workers

Revision ID: inventory_0004
Revises: inventory_0003
Create Date: 2026-12-03 17:30:00.000000
"""

from alembic import op
import sqlalchemy as sa

revision = "inventory_0004"
down_revision = "inventory_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("datacenter", sa.String(length=64), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("interval_s", sa.Float(), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_worker")),
        schema="inventory",
    )
    op.create_index(
        op.f("ix_worker_datacenter"), "worker", ["datacenter"], unique=False, schema="inventory"
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_worker_datacenter"), table_name="worker", schema="inventory")
    op.drop_table("worker", schema="inventory")
