"""Tables of the provisioner service, all in its own ``provisioner`` schema.

``host`` is the projection of the inventory's host events for the datacenters served here.
``instance`` maps each instance to its host and domain: what the last command asked for
(``desired``), what was last seen and reported (``observed``), and the open metering interval
of a running instance (``metered_from`` and the guest's CPU-time counter then). Several workers
of one datacenter share these rows; a row lock is what keeps two of them from acting on one
instance at once.
"""

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Integer,
    String,
    Table,
    Uuid,
    func,
)
from sqlalchemy.dialects.postgresql import BIGINT, JSONB

from compgrid_runtime.db import make_metadata

metadata = make_metadata("provisioner")

DESIRED = ("running", "stopped", "deleted")
OBSERVED = ("creating", "running", "stopped", "failed", "deleted")

host = Table(
    "host",
    metadata,
    Column("datacenter", String(64), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("host_id", Uuid, nullable=False),
    Column("libvirt_uri", String(500), nullable=False),
    Column("state", String(16), nullable=False),
    Column("labels", JSONB, nullable=False, server_default="{}"),
    Column("version", Integer, nullable=False),
    Column("unreachable_since", DateTime(timezone=True)),
    Column("unreachable_reported", Boolean, nullable=False, server_default="false"),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

instance = Table(
    "instance",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("datacenter", String(64), nullable=False),
    Column("host", String(64), nullable=False),
    Column("host_uri", String(500), nullable=False),
    Column("name", String(200), nullable=False),
    Column("project_id", Uuid, nullable=False),
    Column("budget_code_id", Uuid, nullable=False),
    Column("vcpus", Integer, nullable=False),
    Column("memory_mib", Integer, nullable=False),
    Column("disk_gib", Integer, nullable=False),
    Column("gpus", JSONB, nullable=False, server_default="{}"),
    Column("gpu_addresses", JSONB, nullable=False, server_default="[]"),
    Column("volumes", JSONB, nullable=False, server_default="[]"),
    Column("desired", String(16), nullable=False),
    Column("observed", String(16), nullable=False),
    Column("reason", String(1000), nullable=False, server_default=""),
    Column("command_version", Integer, nullable=False),
    Column("metered_from", DateTime(timezone=True)),
    Column("cpu_time_ns", BIGINT, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(f"desired IN {DESIRED!r}", name="desired_known"),
    CheckConstraint(f"observed IN {OBSERVED!r}", name="observed_known"),
    CheckConstraint("(observed = 'running') = (metered_from IS NOT NULL)", name="metered_iff_up"),
    Index("ix_instance_host", "datacenter", "host", "observed"),
)
