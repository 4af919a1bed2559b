"""When each instance ran (for the estimate of hours not priced yet); instances running now
are taken to run since their disk was first started.

Revision ID: billing_0005
Revises: billing_0004
Create Date: 2026-12-03
"""

from alembic import op
import sqlalchemy as sa


revision = 'billing_0005'
down_revision = 'billing_0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('instance_run',
    sa.Column('instance_id', sa.Uuid(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('stopped_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('instance_id', 'started_at', name=op.f('pk_instance_run')),
    schema='billing'
    )
    op.execute(
        "INSERT INTO billing.instance_run (instance_id, started_at) "
        "SELECT id, coalesce(disk_since, now()) FROM billing.instance WHERE state = 'running'"
    )


def downgrade() -> None:
    op.drop_table('instance_run', schema='billing')
