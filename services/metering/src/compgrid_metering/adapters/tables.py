"""Tables of the metering service, all in its own ``metering`` schema."""

from sqlalchemy import BigInteger, Column, DateTime, Integer, Table, Text, Uuid, func, text
from sqlalchemy.dialects.postgresql import JSONB

from compgrid_runtime.db import make_metadata

metadata = make_metadata("metering")

# One closed hour of one instance, as last published (``revision`` counts the corrections).
rollup = Table(
    "rollup",
    metadata,
    Column("instance_id", Uuid, primary_key=True),
    Column("hour_start", DateTime(timezone=True), primary_key=True),
    Column("project_id", Uuid, nullable=False, index=True),
    Column("budget_code_id", Uuid, nullable=False, index=True),
    Column("revision", Integer, nullable=False),
    Column("running_us", BigInteger, nullable=False),
    Column("vcpu_us", BigInteger, nullable=False),
    Column("memory_mib_us", BigInteger, nullable=False),
    Column("cpu_ns", BigInteger, nullable=False),
    Column("gpu_us", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# The Redis counters of one key prefix, known to exist since ``started_at``: a prefix recorded
# here whose marker is missing from Redis means Redis lost the counters (not a new deployment).
counter_set = Table(
    "counter_set",
    metadata,
    Column("redis_prefix", Text, primary_key=True),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("rebuilds", Integer, nullable=False, server_default=text("0")),
    Column("rebuilt_at", DateTime(timezone=True)),
)
