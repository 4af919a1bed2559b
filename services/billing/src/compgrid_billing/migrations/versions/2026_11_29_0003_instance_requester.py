"""Who requested each instance (the billing stats' top users).

Revision ID: billing_0003
Revises: billing_0002
Create Date: 2026-11-29
"""

from alembic import op
import sqlalchemy as sa


revision = 'billing_0003'
down_revision = 'billing_0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('instance', sa.Column('requested_by', sa.Uuid(), nullable=True), schema='billing')


def downgrade() -> None:
    op.drop_column('instance', 'requested_by', schema='billing')
