"""Rates, budgets, usage, the ledger, invoices, webhooks and deliveries.

Revision ID: billing_0002
Revises: billing_0001
Create Date: 2026-11-29
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = 'billing_0002'
down_revision = 'billing_0001'
branch_labels = None
depends_on = None

# Maps of GPU model to an exact number (a jsonb number, or a string of one): added key by key, summed
# as an aggregate, divided, multiplied by a rate map and a factor. A key whose result is zero is left out.
FUNCTIONS = """
CREATE FUNCTION billing.map_add(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT coalesce(jsonb_object_agg(k, v), '{}'::jsonb) FROM (
    SELECT k, sum(v) AS v FROM (
      SELECT key AS k, (value #>> '{}')::numeric AS v FROM jsonb_each(coalesce(a, '{}'::jsonb))
      UNION ALL
      SELECT key, (value #>> '{}')::numeric FROM jsonb_each(coalesce(b, '{}'::jsonb))
    ) both_maps GROUP BY k
  ) summed WHERE v <> 0
$$
;
CREATE FUNCTION billing.map_div(a jsonb, divisor numeric) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT coalesce(jsonb_object_agg(key, (value #>> '{}')::numeric / divisor), '{}'::jsonb)
  FROM jsonb_each(coalesce(a, '{}'::jsonb)) WHERE (value #>> '{}')::numeric <> 0
$$
;
CREATE FUNCTION billing.map_mul(quantities jsonb, rates jsonb, factor numeric) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT coalesce(
    jsonb_object_agg(q.key, (q.value #>> '{}')::numeric * (rates ->> q.key)::numeric * factor),
    '{}'::jsonb)
  FROM jsonb_each(coalesce(quantities, '{}'::jsonb)) q
$$
;
CREATE FUNCTION billing.map_total(a jsonb) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT coalesce(sum((value #>> '{}')::numeric), 0) FROM jsonb_each(coalesce(a, '{}'::jsonb))
$$
;
CREATE AGGREGATE billing.map_sum(jsonb) (
  SFUNC = billing.map_add, STYPE = jsonb, INITCOND = '{}'
)
;
CREATE FUNCTION billing.refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'issued invoices never change (%)', TG_TABLE_NAME
    USING ERRCODE = 'integrity_constraint_violation';
END
$$
;
CREATE TRIGGER invoice_immutable BEFORE UPDATE OR DELETE ON billing.invoice
  FOR EACH ROW EXECUTE FUNCTION billing.refuse_change()
;
CREATE TRIGGER invoice_line_immutable BEFORE UPDATE OR DELETE ON billing.invoice_line
  FOR EACH ROW EXECUTE FUNCTION billing.refuse_change()
;
INSERT INTO billing.invoice_counter (id, last_number) VALUES (1, 0)
"""

DROP_FUNCTIONS = """
DROP AGGREGATE billing.map_sum(jsonb);
DROP FUNCTION billing.map_add(jsonb, jsonb);
DROP FUNCTION billing.map_div(jsonb, numeric);
DROP FUNCTION billing.map_mul(jsonb, jsonb, numeric);
DROP FUNCTION billing.map_total(jsonb);
"""


def upgrade() -> None:
    op.create_table('account',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('display_name', sa.String(length=200), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_account')),
    schema='billing'
    )
    op.create_table('billing_run',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('period_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('period_end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('started_by', sa.String(length=200), nullable=False),
    sa.Column('invoices', sa.Integer(), server_default='0', nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_billing_run')),
    sa.UniqueConstraint('period_start', 'period_end', name='uq_billing_run_period'),
    schema='billing'
    )
    op.create_table('budget',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('project_id', sa.Uuid(), nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('funding', sa.Numeric(precision=18, scale=6), nullable=False),
    sa.Column('valid_from', sa.Date(), nullable=False),
    sa.Column('valid_to', sa.Date(), nullable=False),
    sa.Column('thresholds', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"), nullable=False),
    sa.Column('hard_limit_behaviour', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('auth_version', sa.Integer(), nullable=False),
    sa.Column('charged_scaled', sa.Numeric(), server_default='0', nullable=False),
    sa.Column('state', sa.String(length=16), nullable=True),
    sa.Column('available', sa.Numeric(), nullable=True),
    sa.Column('runs_out_on', sa.Date(), nullable=True),
    sa.Column('held_ids', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"), nullable=False),
    sa.Column('status_version', sa.Integer(), server_default='0', nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_budget')),
    schema='billing'
    )
    op.create_index(op.f('ix_budget_project_id'), 'budget', ['project_id'], unique=False, schema='billing')
    op.create_table('budget_notice',
    sa.Column('budget_code_id', sa.Uuid(), nullable=False),
    sa.Column('threshold_percent', sa.Numeric(), nullable=False),
    sa.Column('noticed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('budget_code_id', 'threshold_percent', name=op.f('pk_budget_notice')),
    schema='billing'
    )
    op.create_table('charge',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('instance_id', sa.Uuid(), nullable=False),
    sa.Column('hour_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('project_id', sa.Uuid(), nullable=False),
    sa.Column('budget_code_id', sa.Uuid(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('usage_revision', sa.Integer(), nullable=False),
    sa.Column('tier_id', sa.Uuid(), nullable=False),
    sa.Column('rate_from', sa.DateTime(timezone=True), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('vcpu_s', sa.Numeric(), nullable=False),
    sa.Column('memory_gib_s', sa.Numeric(), nullable=False),
    sa.Column('storage_gib_s', sa.Numeric(), nullable=False),
    sa.Column('gpu_s', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('vcpu_scaled', sa.Numeric(), nullable=False),
    sa.Column('memory_scaled', sa.Numeric(), nullable=False),
    sa.Column('storage_scaled', sa.Numeric(), nullable=False),
    sa.Column('gpu_scaled', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('total_scaled', sa.Numeric(), nullable=False),
    sa.Column('rated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('instance_id', 'hour_start', 'id', name=op.f('pk_charge')),
    schema='billing'
    )
    op.create_index('ix_charge_budget_hour', 'charge', ['budget_code_id', 'hour_start'], unique=False, schema='billing')
    op.create_table('instance',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('project_id', sa.Uuid(), nullable=False),
    sa.Column('budget_code_id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('instance_type', sa.String(length=64), nullable=False),
    sa.Column('price_tier_id', sa.Uuid(), nullable=True),
    sa.Column('disk_gib', sa.Integer(), nullable=False),
    sa.Column('hourly_price', sa.Numeric(precision=18, scale=6), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('lease_ends_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('charged_scaled', sa.Numeric(), server_default='0', nullable=False),
    sa.Column('hold_amount', sa.Numeric(), server_default='0', nullable=False),
    sa.Column('charged_at_hold_scaled', sa.Numeric(), server_default='0', nullable=False),
    sa.Column('hold_active', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('disk_since', sa.DateTime(timezone=True), nullable=True),
    sa.Column('disk_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('storage_accrued_until', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_instance')),
    schema='billing'
    )
    op.create_index(op.f('ix_instance_budget_code_id'), 'instance', ['budget_code_id'], unique=False, schema='billing')
    op.create_table('invoice_counter',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('last_number', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_invoice_counter')),
    schema='billing'
    )
    op.create_table('parked',
    sa.Column('instance_id', sa.Uuid(), nullable=False),
    sa.Column('hour_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('parked_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('instance_id', 'hour_start', name=op.f('pk_parked')),
    schema='billing'
    )
    op.create_table('price_rate',
    sa.Column('tier_id', sa.Uuid(), nullable=False),
    sa.Column('effective_from', sa.DateTime(timezone=True), nullable=False),
    sa.Column('tier_name', sa.String(length=64), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('vcpu_hour', sa.Numeric(), nullable=False),
    sa.Column('memory_gib_hour', sa.Numeric(), nullable=False),
    sa.Column('storage_gib_month', sa.Numeric(), nullable=False),
    sa.Column('gpu_hour', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.PrimaryKeyConstraint('tier_id', 'effective_from', name=op.f('pk_price_rate')),
    schema='billing'
    )
    op.create_table('project',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('pi_user_id', sa.Uuid(), nullable=False),
    sa.Column('billing_contacts', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'[]'::jsonb"), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_project')),
    schema='billing'
    )
    op.create_table('usage',
    sa.Column('instance_id', sa.Uuid(), nullable=False),
    sa.Column('hour_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('project_id', sa.Uuid(), nullable=False),
    sa.Column('budget_code_id', sa.Uuid(), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('running_s', sa.Numeric(), nullable=False),
    sa.Column('vcpu_s', sa.Numeric(), nullable=False),
    sa.Column('memory_gib_s', sa.Numeric(), nullable=False),
    sa.Column('storage_gib_s', sa.Numeric(), nullable=False),
    sa.Column('gpu_s', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('instance_id', 'hour_start', name=op.f('pk_usage')),
    schema='billing'
    )
    op.create_table('webhook',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('project_id', sa.Uuid(), nullable=True),
    sa.Column('url', sa.String(length=2000), nullable=False),
    sa.Column('secret', sa.String(length=200), nullable=False),
    sa.Column('event_types', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('created_by', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('disabled_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook')),
    schema='billing'
    )
    op.create_index(op.f('ix_webhook_project_id'), 'webhook', ['project_id'], unique=False, schema='billing')
    op.create_table('invoice',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('number', sa.String(length=32), nullable=False),
    sa.Column('sequence', sa.BigInteger(), nullable=False),
    sa.Column('run_id', sa.Uuid(), nullable=False),
    sa.Column('project_id', sa.Uuid(), nullable=False),
    sa.Column('budget_code_id', sa.Uuid(), nullable=False),
    sa.Column('period_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('period_end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('subtotal', sa.Numeric(precision=18, scale=6), nullable=False),
    sa.Column('adjustments', sa.Numeric(precision=18, scale=6), nullable=False),
    sa.Column('total', sa.Numeric(precision=18, scale=6), nullable=False),
    sa.Column('watermark', sa.BigInteger(), nullable=False),
    sa.Column('project_name', sa.String(length=200), nullable=False),
    sa.Column('budget_code', sa.String(length=64), nullable=False),
    sa.Column('budget_name', sa.String(length=200), nullable=False),
    sa.Column('pi_name', sa.String(length=200), nullable=False),
    sa.Column('pi_email', sa.String(length=320), nullable=False),
    sa.Column('issued_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['billing.billing_run.id'], name=op.f('fk_invoice_run_id_billing_run')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_invoice')),
    sa.UniqueConstraint('number', name=op.f('uq_invoice_number')),
    sa.UniqueConstraint('run_id', 'project_id', 'budget_code_id', name='uq_invoice_run_code'),
    sa.UniqueConstraint('sequence', name=op.f('uq_invoice_sequence')),
    schema='billing'
    )
    op.create_index(op.f('ix_invoice_budget_code_id'), 'invoice', ['budget_code_id'], unique=False, schema='billing')
    op.create_index(op.f('ix_invoice_project_id'), 'invoice', ['project_id'], unique=False, schema='billing')
    op.create_table('delivery',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('invoice_id', sa.Uuid(), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('recipient', sa.String(length=2000), nullable=False),
    sa.Column('webhook_id', sa.Uuid(), nullable=True),
    sa.Column('message_id', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('give_up_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_detail', sa.Text(), server_default='', nullable=False),
    sa.Column('requested_by', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("channel IN ('email', 'webhook')", name=op.f('ck_delivery_channel_known')),
    sa.ForeignKeyConstraint(['invoice_id'], ['billing.invoice.id'], name=op.f('fk_delivery_invoice_id_invoice')),
    sa.ForeignKeyConstraint(['webhook_id'], ['billing.webhook.id'], name=op.f('fk_delivery_webhook_id_webhook')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_delivery')),
    schema='billing'
    )
    op.create_index('ix_delivery_due', 'delivery', ['next_attempt_at'], unique=False, schema='billing', postgresql_where=sa.text("state = 'pending'"))
    op.create_index(op.f('ix_delivery_invoice_id'), 'delivery', ['invoice_id'], unique=False, schema='billing')
    op.create_table('invoice_line',
    sa.Column('invoice_id', sa.Uuid(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('instance_id', sa.Uuid(), nullable=False),
    sa.Column('instance_name', sa.String(length=64), nullable=False),
    sa.Column('resource', sa.String(length=16), nullable=False),
    sa.Column('model', sa.String(length=64), server_default='', nullable=False),
    sa.Column('quantity', sa.Numeric(), nullable=False),
    sa.Column('unit', sa.String(length=16), nullable=False),
    sa.Column('rate', sa.Numeric(), nullable=True),
    sa.Column('amount', sa.Numeric(precision=18, scale=6), nullable=False),
    sa.ForeignKeyConstraint(['invoice_id'], ['billing.invoice.id'], name=op.f('fk_invoice_line_invoice_id_invoice')),
    sa.PrimaryKeyConstraint('invoice_id', 'position', name=op.f('pk_invoice_line')),
    schema='billing'
    )
    op.create_table('delivery_attempt',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('delivery_id', sa.Uuid(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('delivered', sa.Boolean(), nullable=False),
    sa.Column('status', sa.Integer(), nullable=True),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('duration_ms', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['delivery_id'], ['billing.delivery.id'], name=op.f('fk_delivery_attempt_delivery_id_delivery')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_delivery_attempt')),
    schema='billing'
    )
    op.create_index(op.f('ix_delivery_attempt_delivery_id'), 'delivery_attempt', ['delivery_id'], unique=False, schema='billing')
    for statement in FUNCTIONS.split("\n;\n"):
        op.execute(statement)


def downgrade() -> None:
    op.drop_index(op.f('ix_delivery_attempt_delivery_id'), table_name='delivery_attempt', schema='billing')
    op.drop_table('delivery_attempt', schema='billing')
    op.drop_table('invoice_line', schema='billing')
    op.drop_index(op.f('ix_delivery_invoice_id'), table_name='delivery', schema='billing')
    op.drop_index('ix_delivery_due', table_name='delivery', schema='billing', postgresql_where=sa.text("state = 'pending'"))
    op.drop_table('delivery', schema='billing')
    op.drop_index(op.f('ix_invoice_project_id'), table_name='invoice', schema='billing')
    op.drop_index(op.f('ix_invoice_budget_code_id'), table_name='invoice', schema='billing')
    op.drop_table('invoice', schema='billing')
    op.drop_index(op.f('ix_webhook_project_id'), table_name='webhook', schema='billing')
    op.drop_table('webhook', schema='billing')
    op.drop_table('usage', schema='billing')
    op.drop_table('project', schema='billing')
    op.drop_table('price_rate', schema='billing')
    op.drop_table('parked', schema='billing')
    op.drop_table('invoice_counter', schema='billing')
    op.drop_index(op.f('ix_instance_budget_code_id'), table_name='instance', schema='billing')
    op.drop_table('instance', schema='billing')
    op.drop_index('ix_charge_budget_hour', table_name='charge', schema='billing')
    op.drop_table('charge', schema='billing')
    op.drop_table('budget_notice', schema='billing')
    op.drop_index(op.f('ix_budget_project_id'), table_name='budget', schema='billing')
    op.drop_table('budget', schema='billing')
    op.drop_table('billing_run', schema='billing')
    op.drop_table('account', schema='billing')
    for statement in DROP_FUNCTIONS.strip().splitlines():
        op.execute(statement)
    op.execute("DROP FUNCTION billing.refuse_change() CASCADE")
