"""Tables of the billing service, all in its own ``billing`` schema."""

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from compgrid_runtime.db import make_metadata

metadata = make_metadata("billing")


def _at(name: str = "created_at") -> Column[object]:
    return Column(name, DateTime(timezone=True), nullable=False, server_default=func.now())


def _map(name: str) -> Column[object]:
    """A map of GPU model to an exact number (jsonb numbers are PostgreSQL numerics)."""
    return Column(name, JSONB, nullable=False, server_default=text("'{}'::jsonb"))


# Rates of every price tier from their dates on, as the inventory published them.
price_rate = Table(
    "price_rate",
    metadata,
    Column("tier_id", Uuid, primary_key=True),
    Column("effective_from", DateTime(timezone=True), primary_key=True),
    Column("tier_name", String(64), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("vcpu_hour", Numeric, nullable=False),
    Column("memory_gib_hour", Numeric, nullable=False),
    Column("storage_gib_month", Numeric, nullable=False),
    _map("gpu_hour"),
)

# People, from auth: the PI's name and address go on invoices and their mail.
account = Table(
    "account",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("email", String(320), nullable=False),
    Column("display_name", String(200), nullable=False),
)

# Projects, from auth, plus what billing owns: the addresses invoices also go to.
project = Table(
    "project",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("pi_user_id", Uuid, nullable=False),
    Column("billing_contacts", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
)

# Budget codes, from auth, with billing's running view: charges so far, and the last status
# published (``status_version`` grows with every BudgetStatusChanged).
budget = Table(
    "budget",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("project_id", Uuid, nullable=False, index=True),
    Column("code", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("funding", Numeric(18, 6), nullable=False),
    Column("valid_from", Date, nullable=False),
    Column("valid_to", Date, nullable=False),
    Column("thresholds", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("hard_limit_behaviour", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("auth_version", Integer, nullable=False),
    Column("charged_scaled", Numeric, nullable=False, server_default="0"),
    Column("state", String(16), nullable=True),
    Column("available", Numeric, nullable=True),
    Column("runs_out_on", Date, nullable=True),
    Column("held_ids", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("status_version", Integer, nullable=False, server_default="0"),
)

# The soft thresholds a code's spending has reached and that were announced: a crossing is
# announced once; a threshold the spending falls below again (funding was raised) is armed
# again.
budget_notice = Table(
    "budget_notice",
    metadata,
    Column("budget_code_id", Uuid, primary_key=True),
    Column("threshold_percent", Numeric, primary_key=True),
    _at("noticed_at"),
)

# Instances as admitted by the inventory: what prices them, and their admission hold.
instance = Table(
    "instance",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("project_id", Uuid, nullable=False),
    Column("budget_code_id", Uuid, nullable=False, index=True),
    Column("name", String(64), nullable=False),
    Column("instance_type", String(64), nullable=False),
    Column("price_tier_id", Uuid, nullable=True),
    Column("disk_gib", Integer, nullable=False),
    Column("hourly_price", Numeric(18, 6), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("lease_ends_at", DateTime(timezone=True), nullable=True),
    Column("state", String(20), nullable=False),
    Column("version", Integer, nullable=False),
    Column("charged_scaled", Numeric, nullable=False, server_default="0"),
    # The hold: ``hold_amount`` minus what was charged since it was placed is still held.
    Column("hold_amount", Numeric, nullable=False, server_default="0"),
    Column("charged_at_hold_scaled", Numeric, nullable=False, server_default="0"),
    Column("hold_active", Boolean, nullable=False, server_default="false"),
    # The disk: from the first start until deletion; stopped hours are accrued up to here.
    Column("disk_since", DateTime(timezone=True), nullable=True),
    Column("disk_until", DateTime(timezone=True), nullable=True),
    Column("storage_accrued_until", DateTime(timezone=True), nullable=True),
    # who asked for it (an account); NULL for instances billing learnt before it kept this
    Column("requested_by", Uuid, nullable=True),
)

# When each instance ran, from its lifecycle reports (``stopped_at`` NULL: running now): what
# the estimate of the hours metering has not closed yet counts.
instance_run = Table(
    "instance_run",
    metadata,
    Column("instance_id", Uuid, primary_key=True),
    Column("started_at", DateTime(timezone=True), primary_key=True),
    Column("stopped_at", DateTime(timezone=True), nullable=True),
)

# Each instance's usage in each hour: the newest rollup revision metering published.
usage = Table(
    "usage",
    metadata,
    Column("instance_id", Uuid, primary_key=True),
    Column("hour_start", DateTime(timezone=True), primary_key=True),
    Column("project_id", Uuid, nullable=False),
    Column("budget_code_id", Uuid, nullable=False),
    Column("revision", Integer, nullable=False),
    Column("running_s", Numeric, nullable=False),
    Column("vcpu_s", Numeric, nullable=False),
    Column("memory_gib_s", Numeric, nullable=False),
    Column("storage_gib_s", Numeric, nullable=False),
    _map("gpu_s"),
    _at("received_at"),
)

# Instance-hours whose newest usage could not be priced yet (see ``rating``): kept apart so
# that retrying them never scans all usage.
parked = Table(
    "parked",
    metadata,
    Column("instance_id", Uuid, primary_key=True),
    Column("hour_start", DateTime(timezone=True), primary_key=True),
    _at("parked_at"),
)

# The ledger: append-only, and exact. Quantities are resource-seconds (GiB-seconds for memory
# and storage); amounts are money * ``AMOUNT_SCALE`` (2,628,000, the seconds of a 730-hour
# month), so that seconds * an hourly or monthly rate is stored without any division and sums
# of entries are exact — dividing and rounding happen once, on the sum (an invoice line).
# The first entry of an instance-hour charges its usage; later ones
# (a corrected rollup, a price correction) adjust by the difference, so the entries of an
# instance-hour always sum to its usage priced at the rates in effect then. ``id`` orders the
# entries; an invoice covers its code's entries up to its ``watermark``.
charge = Table(
    "charge",
    metadata,
    Column("id", BigInteger, Identity(), nullable=False),
    Column("instance_id", Uuid, nullable=False),
    Column("hour_start", DateTime(timezone=True), nullable=False),
    Column("project_id", Uuid, nullable=False),
    Column("budget_code_id", Uuid, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("usage_revision", Integer, nullable=False),
    Column("tier_id", Uuid, nullable=False),
    Column("rate_from", DateTime(timezone=True), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("vcpu_s", Numeric, nullable=False),
    Column("memory_gib_s", Numeric, nullable=False),
    Column("storage_gib_s", Numeric, nullable=False),
    _map("gpu_s"),
    Column("vcpu_scaled", Numeric, nullable=False),
    Column("memory_scaled", Numeric, nullable=False),
    Column("storage_scaled", Numeric, nullable=False),
    _map("gpu_scaled"),
    Column("total_scaled", Numeric, nullable=False),
    _at("rated_at"),
    # one index finds an instance-hour's entries and keeps entries unique
    PrimaryKeyConstraint("instance_id", "hour_start", "id", name="pk_charge"),
    Index("ix_charge_budget_hour", "budget_code_id", "hour_start"),
)

billing_run = Table(
    "billing_run",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("period_start", DateTime(timezone=True), nullable=False),
    Column("period_end", DateTime(timezone=True), nullable=False),
    Column("state", String(16), nullable=False),
    Column("started_by", String(200), nullable=False),
    Column("invoices", Integer, nullable=False, server_default="0"),
    _at("started_at"),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("period_start", "period_end", name="uq_billing_run_period"),
)

# One row: the last invoice number given (taken under a row lock, so numbers have no gaps).
invoice_counter = Table(
    "invoice_counter",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("last_number", BigInteger, nullable=False),
)

# Issued invoices and their lines never change (a trigger refuses updates and deletes); the
# names printed on them are copied at issue.
invoice = Table(
    "invoice",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("number", String(32), nullable=False, unique=True),
    Column("sequence", BigInteger, nullable=False, unique=True),
    Column("run_id", Uuid, ForeignKey("billing_run.id"), nullable=False),
    Column("project_id", Uuid, nullable=False, index=True),
    Column("budget_code_id", Uuid, nullable=False, index=True),
    Column("period_start", DateTime(timezone=True), nullable=False),
    Column("period_end", DateTime(timezone=True), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("subtotal", Numeric(18, 6), nullable=False),
    Column("adjustments", Numeric(18, 6), nullable=False),
    Column("total", Numeric(18, 6), nullable=False),
    Column("watermark", BigInteger, nullable=False),
    Column("project_name", String(200), nullable=False),
    Column("budget_code", String(64), nullable=False),
    Column("budget_name", String(200), nullable=False),
    Column("pi_name", String(200), nullable=False),
    Column("pi_email", String(320), nullable=False),
    _at("issued_at"),
    UniqueConstraint("run_id", "project_id", "budget_code_id", name="uq_invoice_run_code"),
)

invoice_line = Table(
    "invoice_line",
    metadata,
    Column("invoice_id", Uuid, ForeignKey("invoice.id"), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("instance_id", Uuid, nullable=False),
    Column("instance_name", String(64), nullable=False),
    Column("resource", String(16), nullable=False),
    Column("model", String(64), nullable=False, server_default=""),
    Column("quantity", Numeric, nullable=False),
    Column("unit", String(16), nullable=False),
    Column("rate", Numeric, nullable=True),
    Column("amount", Numeric(18, 6), nullable=False),
)

# Where invoices are announced: a project's endpoints, or every project's (project_id NULL).
webhook = Table(
    "webhook",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("project_id", Uuid, nullable=True, index=True),
    Column("url", String(2000), nullable=False),
    Column("secret", String(200), nullable=False),
    Column("event_types", JSONB, nullable=False),
    Column("created_by", Uuid, nullable=False),
    _at(),
    Column("disabled_at", DateTime(timezone=True), nullable=True),
)

# One message to one recipient (an address or an endpoint) over one channel; retried until it
# succeeds or ``give_up_at``. A webhook message keeps its ``message_id`` on every attempt. An
# invoice's message is rendered from the invoice at each attempt; any other event's (a budget
# threshold) is signed from the ``payload`` stored with it.
delivery = Table(
    "delivery",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("invoice_id", Uuid, ForeignKey("invoice.id"), nullable=True, index=True),
    Column("event_type", String(64), nullable=False, server_default="invoice.issued"),
    Column("payload", Text, nullable=True),
    Column("channel", String(16), nullable=False),
    Column("recipient", String(2000), nullable=False),
    Column("webhook_id", Uuid, ForeignKey("webhook.id"), nullable=True),
    Column("message_id", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=True),
    Column("give_up_at", DateTime(timezone=True), nullable=False),
    Column("last_detail", Text, nullable=False, server_default=""),
    Column("requested_by", String(200), nullable=False),
    _at(),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    CheckConstraint("channel IN ('email', 'webhook')", name="channel_known"),
    CheckConstraint("invoice_id IS NOT NULL OR payload IS NOT NULL", name="has_content"),
    Index("ix_delivery_due", "next_attempt_at", postgresql_where=text("state = 'pending'")),
)

delivery_attempt = Table(
    "delivery_attempt",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("delivery_id", Uuid, ForeignKey("delivery.id"), nullable=False, index=True),
    Column("attempt", Integer, nullable=False),
    _at("at"),
    Column("delivered", Boolean, nullable=False),
    Column("status", Integer, nullable=True),
    Column("detail", Text, nullable=False),
    Column("duration_ms", Integer, nullable=False),
)
