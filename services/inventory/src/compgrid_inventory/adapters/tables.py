"""Tables of the inventory service, all in its own ``inventory`` schema.

Host capacity and what is claimed on it live in the same row, so a placement claim is one
conditional ``UPDATE`` that Postgres serialises per host: two requests can never both take the
last free vCPU. GPUs are counted per model in JSONB maps (``{"a100": 4}``).
"""

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Table,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from compgrid_runtime.db import make_metadata

metadata = make_metadata("inventory")


def _created_at() -> Column[object]:
    return Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now())


datacenter = Table(
    "datacenter",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("description", String(500), nullable=False, server_default=""),
    Column("placement", String(16), nullable=False, server_default="pack"),
    _created_at(),
    CheckConstraint("placement IN ('pack', 'spread')", name="placement_known"),
)

host = Table(
    "host",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("datacenter_id", Uuid, ForeignKey("datacenter.id"), nullable=False, index=True),
    Column("name", String(64), nullable=False),
    Column("libvirt_uri", String(500), nullable=False),
    Column("state", String(16), nullable=False, server_default="active"),
    Column("vcpus", Integer, nullable=False),
    Column("memory_mib", Integer, nullable=False),
    Column("disk_gib", Integer, nullable=False),
    Column("gpus", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("cpu_overcommit", Numeric(4, 2), nullable=False, server_default="4.0"),
    Column("memory_overcommit", Numeric(4, 2), nullable=False, server_default="1.0"),
    Column("labels", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("claimed_vcpus", Integer, nullable=False, server_default="0"),
    Column("claimed_memory_mib", Integer, nullable=False, server_default="0"),
    Column("claimed_disk_gib", Integer, nullable=False, server_default="0"),
    Column("claimed_gpus", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    # Kept by Postgres from the columns above, so placement can read hosts in the order it
    # wants from an index instead of sorting every host.
    Column(
        "free_vcpus",
        Integer,
        Computed("floor(vcpus * cpu_overcommit)::int - claimed_vcpus", persisted=True),
    ),
    Column("has_gpus", Boolean, Computed("gpus <> '{}'::jsonb", persisted=True)),
    Column("version", Integer, nullable=False, server_default="1"),
    _created_at(),
    UniqueConstraint("datacenter_id", "name", name="uq_host_datacenter_name"),
    Index(
        "ix_host_placement",
        "datacenter_id",
        "has_gpus",
        "free_vcpus",
        "name",
        postgresql_where=text("state = 'active'"),
    ),
    CheckConstraint("state IN ('active', 'maintenance', 'down')", name="state_known"),
    CheckConstraint("vcpus > 0 AND memory_mib > 0 AND disk_gib >= 0", name="capacity_positive"),
    CheckConstraint(
        "cpu_overcommit >= 1 AND cpu_overcommit <= 16 "
        "AND memory_overcommit >= 1 AND memory_overcommit <= 4",
        name="overcommit_sane",
    ),
    CheckConstraint(
        "claimed_vcpus >= 0 AND claimed_memory_mib >= 0 AND claimed_disk_gib >= 0",
        name="claims_not_negative",
    ),
    # The last line of defence: whatever the code does, a host is never overcommitted.
    CheckConstraint(
        "claimed_vcpus <= floor(vcpus * cpu_overcommit) "
        "AND claimed_memory_mib <= floor(memory_mib * memory_overcommit) "
        "AND claimed_disk_gib <= disk_gib",
        name="claims_within_capacity",
    ),
)

claim = Table(
    "claim",
    metadata,
    Column("id", Uuid, primary_key=True),  # the instance id: one claim per instance
    Column("host_id", Uuid, ForeignKey("host.id"), nullable=False, index=True),
    Column("vcpus", Integer, nullable=False),
    Column("memory_mib", Integer, nullable=False),
    Column("disk_gib", Integer, nullable=False),
    Column("gpus", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    _created_at(),
)

image = Table(
    "image",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("system_type", String(64), nullable=False, index=True),
    Column("format", String(16), nullable=False),
    Column("source", String(1000), nullable=False),
    Column("default_user", String(64), nullable=False),
    Column("description", String(500), nullable=False, server_default=""),
    _created_at(),
)

price_tier = Table(
    "price_tier",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("currency", String(3), nullable=False),
    _created_at(),
)

# Rates are never changed in place: each change is a new row from its date on, so any past
# hour can be priced with the rates that were in effect then.
price_rate = Table(
    "price_rate",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("price_tier_id", Uuid, ForeignKey("price_tier.id"), nullable=False),
    Column("effective_from", DateTime(timezone=True), nullable=False),
    Column("vcpu_hour", Numeric(18, 6), nullable=False),
    Column("memory_gib_hour", Numeric(18, 6), nullable=False),
    Column("storage_gib_month", Numeric(18, 6), nullable=False),
    Column("gpu_hour", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    _created_at(),
    UniqueConstraint("price_tier_id", "effective_from", name="uq_price_rate_tier_from"),
    CheckConstraint(
        "vcpu_hour >= 0 AND memory_gib_hour >= 0 AND storage_gib_month >= 0",
        name="rates_not_negative",
    ),
)

instance_type = Table(
    "instance_type",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("vcpus", Integer, nullable=False),
    Column("memory_mib", Integer, nullable=False),
    Column("disk_gib", Integer, nullable=False),
    Column("gpus", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("system_types", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("price_tier_id", Uuid, ForeignKey("price_tier.id"), nullable=False),
    Column("description", String(500), nullable=False, server_default=""),
    Column("retired_at", DateTime(timezone=True), nullable=True),
    _created_at(),
    CheckConstraint("vcpus > 0 AND memory_mib > 0 AND disk_gib >= 0", name="size_positive"),
)

# Projection of the auth service's projects, plus what the inventory owns about each:
# quotas (set by admins) and the approval and lease policy (set by the PI).
project = Table(
    "project",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("pi_user_id", Uuid, nullable=False),
    Column("approval_above_amount", Numeric(18, 6), nullable=True),
    Column("approval_above_currency", String(3), nullable=True),
    Column("approval_for_gpus", Boolean, nullable=False, server_default="false"),
    Column("default_lease_hours", Integer, nullable=True),
    Column("max_instances", Integer, nullable=True),
    Column("max_vcpus", Integer, nullable=True),
    Column("max_memory_mib", Integer, nullable=True),
    Column("max_gpus", Integer, nullable=True),
    _created_at(),
)

# Projection of budget codes: validity and status from auth, what is left from billing.
# ``available`` stays NULL until billing reports on the code: no limit is known then.
budget = Table(
    "budget",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("project_id", Uuid, nullable=False, index=True),
    Column("code", String(64), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("valid_from", Date, nullable=False),
    Column("valid_to", Date, nullable=False),
    Column("status", String(16), nullable=False),
    Column("hard_limit_behaviour", String(32), nullable=False),
    Column("auth_version", Integer, nullable=False),
    Column("billing_state", String(16), nullable=True),
    Column("available", Numeric(18, 6), nullable=True),
    Column("billing_version", Integer, nullable=False, server_default="0"),
    # When billing's newest word on the code was said: an older exhaustion is history.
    Column("billing_updated_at", DateTime(timezone=True), nullable=True),
)

LIVE_NAME_WHERE = "state NOT IN ('deleted', 'rejected')"
"""Instances whose name is taken in their project (the unique index's predicate)."""

instance = Table(
    "instance",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("name", String(64), nullable=False),
    Column("project_id", Uuid, nullable=False),
    Column("budget_code_id", Uuid, nullable=False, index=True),
    Column("requested_by", Uuid, nullable=False),
    Column("instance_type_id", Uuid, ForeignKey("instance_type.id"), nullable=False),
    Column("instance_type", String(64), nullable=False),
    Column("image_id", Uuid, ForeignKey("image.id"), nullable=False),
    Column("image", String(64), nullable=False),
    Column("vcpus", Integer, nullable=False),
    Column("memory_mib", Integer, nullable=False),
    Column("disk_gib", Integer, nullable=False),
    Column("gpus", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("hourly_price", Numeric(18, 6), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("requested_datacenter", String(64), nullable=True),
    Column("labels", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("ssh_public_key", String(16_384), nullable=True),
    Column("state", String(20), nullable=False),
    Column("version", Integer, nullable=False),
    Column("reason_code", String(64), nullable=True),
    Column("reason", String(1000), nullable=True),
    Column("host_id", Uuid, ForeignKey("host.id"), nullable=True, index=True),
    Column("domain_uuid", Uuid, nullable=True),
    Column("addresses", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    # The newest provisioner report applied: an older one arriving late changes nothing.
    Column("observed_at", DateTime(timezone=True), nullable=True),
    # When the last command went out: a report observed before it cannot reflect it.
    Column("commanded_at", DateTime(timezone=True), nullable=True),
    Column("lease_ends_at", DateTime(timezone=True), nullable=True),
    Column("lease_warned_at", DateTime(timezone=True), nullable=True),
    Column("lease_stopped_at", DateTime(timezone=True), nullable=True),
    # The admission hold placed for the instance (shown to its owners), until it stops.
    Column("hold_amount", Numeric(18, 6), nullable=True),
    Column("hold_placed_at", DateTime(timezone=True), nullable=True),
    Column("hold_until", DateTime(timezone=True), nullable=True),
    _created_at(),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_instance_project", "project_id", "id"),
    Index("ix_instance_lease", "lease_ends_at", postgresql_where=text("lease_ends_at IS NOT NULL")),
    # A name is taken in its project until the instance is gone (deleted or never admitted).
    Index(
        "uq_instance_live_name",
        "project_id",
        "name",
        unique=True,
        postgresql_where=text(LIVE_NAME_WHERE),
    ),
    CheckConstraint(
        "state IN ('pending_approval', 'requested', 'scheduled', 'starting', 'running',"
        " 'stopping', 'stopped', 'deleting', 'deleted', 'failed', 'rejected')",
        name="state_known",
    ),
    CheckConstraint("version >= 1", name="version_positive"),
)

# Admission holds placed here and not yet confirmed by billing's budget status: counted against
# what is left so concurrent requests cannot together overspend a budget code.
hold = Table(
    "hold",
    metadata,
    Column("instance_id", Uuid, primary_key=True),
    Column("budget_code_id", Uuid, nullable=False, index=True),
    Column("amount", Numeric(18, 6), nullable=False),
    _created_at(),
)

# The provisioner workers each datacenter has, from their heartbeats (one row per process). A
# datacenter is placed on only while one of its workers is live (see ``adapters/workers.py``).
worker = Table(
    "worker",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("datacenter", String(64), nullable=False, index=True),
    Column("hostname", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("last_seen_at", DateTime(timezone=True), nullable=False),
    Column("interval_s", Float, nullable=False),
    Column("stopped_at", DateTime(timezone=True), nullable=True),
)
