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
    DateTime,
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
