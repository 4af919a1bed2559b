"""The Redis counter sets this database has seen (to tell a lost Redis from a new one).

Revision ID: metering_0003
Revises: metering_0002
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "metering_0003"
down_revision = "metering_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "counter_set",
        sa.Column("redis_prefix", sa.Text(), nullable=False),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("rebuilds", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("rebuilt_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("redis_prefix", name=op.f("pk_counter_set")),
        schema="metering",
    )


def downgrade() -> None:
    op.drop_table("counter_set", schema="metering")
