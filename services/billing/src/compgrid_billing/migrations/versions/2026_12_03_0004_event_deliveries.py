"""Deliveries of events other than invoices (budget thresholds): their type and signed body.

Revision ID: billing_0004
Revises: billing_0003
Create Date: 2026-12-03
"""

from alembic import op
import sqlalchemy as sa


revision = 'billing_0004'
down_revision = 'billing_0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('delivery', sa.Column('event_type', sa.String(length=64), server_default='invoice.issued', nullable=False), schema='billing')
    op.add_column('delivery', sa.Column('payload', sa.Text(), nullable=True), schema='billing')
    op.alter_column('delivery', 'invoice_id', existing_type=sa.Uuid(), nullable=True, schema='billing')
    op.create_check_constraint(op.f('ck_delivery_has_content'), 'delivery', 'invoice_id IS NOT NULL OR payload IS NOT NULL', schema='billing')


def downgrade() -> None:
    op.execute("DELETE FROM billing.delivery_attempt WHERE delivery_id IN (SELECT id FROM billing.delivery WHERE invoice_id IS NULL)")
    op.execute("DELETE FROM billing.delivery WHERE invoice_id IS NULL")
    op.drop_constraint(op.f('ck_delivery_has_content'), 'delivery', schema='billing')
    op.alter_column('delivery', 'invoice_id', existing_type=sa.Uuid(), nullable=False, schema='billing')
    op.drop_column('delivery', 'payload', schema='billing')
    op.drop_column('delivery', 'event_type', schema='billing')
