"""Tables of the auth service, all in its own ``auth`` schema."""

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Identity,
    Index,
    Integer,
    Numeric,
    String,
    Table,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from compgrid_runtime.db import make_metadata

metadata = make_metadata("auth")


def _now() -> Column[object]:
    return Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now())


user_account = Table(
    "user_account",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("email", String(254), nullable=False, unique=True),
    Column("display_name", String(200), nullable=False),
    Column("password_hash", Text, nullable=True),
    Column("roles", ARRAY(String(16)), nullable=False),
    Column("status", String(16), nullable=False),
    _now(),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

project = Table(
    "project",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("pi_user_id", Uuid, nullable=False),
    Column("approval_threshold_amount", Numeric(18, 4), nullable=True),
    Column("approval_currency", String(3), nullable=True),
    Column("default_lease_hours", Integer, nullable=True),
    Column("created_by", Uuid, nullable=False),
    _now(),
)

membership = Table(
    "membership",
    metadata,
    Column("project_id", Uuid, primary_key=True),
    Column("user_id", Uuid, primary_key=True),
    Column("role", String(16), nullable=False),
    _now(),
)

budget_code = Table(
    "budget_code",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("project_id", Uuid, nullable=False, index=True),
    Column("code", String(64), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("funding_amount", Numeric(18, 4), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("valid_from", Date, nullable=False),
    Column("valid_to", Date, nullable=False),
    Column("soft_thresholds", ARRAY(Numeric(7, 2)), nullable=False),
    Column("hard_limit_behaviour", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("version", Integer, nullable=False),
    _now(),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("valid_to >= valid_from", name="valid_dates"),
    CheckConstraint("funding_amount > 0", name="positive_funding"),
)

api_token = Table(
    "api_token",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("user_id", Uuid, nullable=False, index=True),
    Column("name", String(100), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    _now(),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Index(
        "uq_api_token_live_name",
        "user_id",
        "name",
        unique=True,
        postgresql_where=text("revoked_at IS NULL"),
    ),
)

refresh_token = Table(
    "refresh_token",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("family_id", Uuid, nullable=False, index=True),
    Column("user_id", Uuid, nullable=False, index=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    _now(),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

signing_key = Table(
    "signing_key",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("private_key", Text, nullable=False),
    Column("public_jwk", JSONB, nullable=False),
    _now(),
    Column("retired_at", DateTime(timezone=True), nullable=True),
)

one_time_token = Table(
    "one_time_token",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("purpose", String(16), nullable=False),
    Column("user_id", Uuid, nullable=False),
    Column("project_id", Uuid, nullable=True),
    _now(),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True), nullable=True),
)

audit_entry = Table(
    "audit_entry",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("actor_id", Uuid, nullable=True, index=True),
    Column("action", String(64), nullable=False, index=True),
    Column("target_type", String(32), nullable=False),
    Column("target_id", String(64), nullable=True),
    Column("client_address", String(100), nullable=True),
    Column("request_id", String(100), nullable=True),
    Column("details", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
)

platform_setting = Table(
    "platform_setting",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("enabled", Boolean, nullable=False),
)
