"""instance hold: what admission set aside, shown on the instance

Revision ID: inventory_0005
Revises: inventory_0004
Create Date: 2026-12-03 17:40:00.000000
"""

from alembic import op
import sqlalchemy as sa

revision = "inventory_0005"
down_revision = "inventory_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "instance", sa.Column("hold_amount", sa.Numeric(18, 6), nullable=True), schema="inventory"
    )
    op.add_column(
        "instance",
        sa.Column("hold_placed_at", sa.DateTime(timezone=True), nullable=True),
        schema="inventory",
    )
    op.add_column(
        "instance",
        sa.Column("hold_until", sa.DateTime(timezone=True), nullable=True),
        schema="inventory",
    )


def downgrade() -> None:
    for name in ("hold_until", "hold_placed_at", "hold_amount"):
        op.drop_column("instance", name, schema="inventory")
