"""Closed hourly rollups.

Revision ID: metering_0002
Revises: metering_0001
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "metering_0002"
down_revision = "metering_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollup",
        sa.Column("instance_id", sa.Uuid(), nullable=False),
        sa.Column("hour_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("budget_code_id", sa.Uuid(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("running_us", sa.BigInteger(), nullable=False),
        sa.Column("vcpu_us", sa.BigInteger(), nullable=False),
        sa.Column("memory_mib_us", sa.BigInteger(), nullable=False),
        sa.Column("cpu_ns", sa.BigInteger(), nullable=False),
        sa.Column(
            "gpu_us",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("instance_id", "hour_start", name=op.f("pk_rollup")),
        schema="metering",
    )
    op.create_index(
        op.f("ix_rollup_project_id"), "rollup", ["project_id"], unique=False, schema="metering"
    )
    op.create_index(
        op.f("ix_rollup_budget_code_id"),
        "rollup",
        ["budget_code_id"],
        unique=False,
        schema="metering",
    )


def downgrade() -> None:
    op.drop_table("rollup", schema="metering")
