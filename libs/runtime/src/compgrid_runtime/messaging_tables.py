"""The outbox and inbox tables every service has in its own schema."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    LargeBinary,
    MetaData,
    String,
    Table,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB


def add_messaging_tables(metadata: MetaData) -> None:
    """Declare ``outbox`` and ``inbox`` in the metadata's schema."""
    Table(
        "outbox",
        metadata,
        Column("id", BigInteger, Identity(), primary_key=True),
        Column("event_id", Uuid, nullable=False, unique=True),
        Column("subject", String(255), nullable=False),
        Column("event_type", String(128), nullable=False),
        Column("aggregate_id", String(128), nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("headers", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("published_at", DateTime(timezone=True), nullable=True),
        Index("ix_outbox_unpublished", "id", postgresql_where=text("published_at IS NULL")),
    )
    Table(
        "inbox",
        metadata,
        Column("consumer", String(128), primary_key=True),
        Column("event_id", Uuid, primary_key=True),
        Column("subject", String(255), nullable=False),
        Column("applied_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )


def outbox_table(metadata: MetaData) -> Table:
    """Return the outbox table of a service's metadata."""
    return metadata.tables[f"{metadata.schema}.outbox"]


def inbox_table(metadata: MetaData) -> Table:
    """Return the inbox table of a service's metadata."""
    return metadata.tables[f"{metadata.schema}.inbox"]
