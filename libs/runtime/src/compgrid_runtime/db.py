"""The service's own Postgres schema: metadata, engine and sessions.

Every table of a service lives in ``MetaData(schema=<service>)`` with one naming convention, so
constraint names are stable across migrations and no table ever lands in another schema.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import MetaData, event, text
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def make_metadata(schema: str) -> MetaData:
    """Return the metadata of one service, bound to its schema, with the messaging tables."""
    from compgrid_runtime.messaging_tables import add_messaging_tables

    metadata = MetaData(schema=schema, naming_convention=NAMING_CONVENTION)
    add_messaging_tables(metadata)
    return metadata


def create_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    """Return an asyncpg engine (``postgresql://`` URLs are accepted and upgraded).

    Connections are opened as needed up to ``pool_size`` and then kept: no overflow
    connections, which would be opened and closed again (connect, TLS negotiation, statements
    prepared anew) at every peak. Beyond the pool, work waits for a connection.

    A connection the server has closed (a restart, an idle timeout) is replaced when it is
    taken from the pool. That check reads the driver's own state; SQLAlchemy's "pre-ping"
    would cost three round trips (begin, ping, rollback) on every checkout.
    """
    url = database_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=0)
    event.listen(engine.sync_engine, "checkout", _replace_closed)
    return engine


def _replace_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("the server closed this connection")  # the pool opens another


def session_factory(engine: AsyncEngine) -> async_sessionmaker:  # type: ignore[type-arg]
    """Return the session factory used by units of work."""
    return async_sessionmaker(engine, expire_on_commit=False)


async def ensure_schema(engine: AsyncEngine, schema: str) -> None:
    """Create the service's schema when it does not exist yet."""
    async with engine.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))


async def ping(engine: AsyncEngine) -> None:
    """Raise unless the database answers."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
