"""The service's own Postgres schema: metadata, engine and sessions.

Every table of a service lives in ``MetaData(schema=<service>)`` with one naming convention, so
constraint names are stable across migrations and no table ever lands in another schema.

A server that refuses connections (too many clients, starting up or shutting down, nothing
listening) is not a bug of the request that needed one: opening a connection then raises
:class:`DatabaseUnavailable`, as does waiting longer than ``pool_timeout_s`` for one of the
process's own connections to come free. Request/reply answers it as 503 ``database_unavailable``,
consumers retry with backoff and background jobs try again next round. The pool says so in
one log line when the refusals start and one when connections succeed again, not once per
request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg
from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry

from compgrid_runtime.errors import DomainError
from compgrid_runtime.logs import get_logger

log = get_logger(__name__)

REFUSALS = (OSError, asyncpg.TooManyConnectionsError, asyncpg.CannotConnectNowError)
"""What asyncpg raises when the server is there but takes no more connections, or is not
there: ``OSError`` covers a refused or timed-out TCP connection and an unknown host."""

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


class DatabaseUnavailable(DomainError):
    """The database server refuses connections; the same request can succeed a little later."""

    status = 503
    code = "database_unavailable"
    retry_after_s: int | None = 1


def create_engine(
    database_url: str,
    *,
    pool_size: int = 10,
    application_name: str | None = None,
    pool_timeout_s: float = 30.0,
) -> AsyncEngine:
    """Return an asyncpg engine (``postgresql://`` URLs are accepted and upgraded).

    Connections are opened as needed up to ``pool_size`` and then kept: no overflow
    connections, which would be opened and closed again (connect, TLS negotiation, statements
    prepared anew) at every peak. Beyond the pool, work waits for a connection. Each
    connection names ``application_name`` to the server (``pg_stat_activity`` shows who holds
    what), and a refused connection raises :class:`DatabaseUnavailable`.

    A connection the server has closed (a restart, an idle timeout) is replaced when it is
    taken from the pool. That check reads the driver's own state; SQLAlchemy's "pre-ping"
    would cost three round trips (begin, ping, rollback) on every checkout.
    """
    url = make_url(database_url.replace("postgresql://", "postgresql+asyncpg://", 1))
    connector = _Connector(url.get_dialect()().create_connect_args(url)[1], application_name)
    engine = create_async_engine(
        url,
        poolclass=_Pool,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=pool_timeout_s,
        async_creator=connector.connect,
    )
    event.listen(engine.sync_engine, "checkout", _replace_closed)
    return engine


class _Connector:
    """Opens the pool's connections and says when the server starts and stops refusing."""

    def __init__(self, params: Mapping[str, Any], application_name: str | None) -> None:
        self._params = dict(params)
        self._params.pop("prepared_statement_cache_size", None)  # the dialect's, not asyncpg's
        if application_name:
            settings = {**self._params.get("server_settings", {})}
            self._params["server_settings"] = {**settings, "application_name": application_name}
        self._refusing = False

    async def connect(self) -> asyncpg.Connection:
        """Open one connection; raise DatabaseUnavailable when the server refuses it."""
        try:
            connection = await asyncpg.connect(**self._params)
        except REFUSALS as exc:
            if not self._refusing:
                self._refusing = True
                log.error(
                    "database refuses connections; requests answer 503 until it accepts again",
                    reason=str(exc) or type(exc).__name__,
                    host=str(self._params.get("host")),
                )
            # the reason names hosts and roles: it goes to the log, not to the caller
            raise DatabaseUnavailable("the database is not accepting connections") from exc
        if self._refusing:
            self._refusing = False
            log.warning("database accepts connections again")
        return connection


class _Pool(AsyncAdaptedQueuePool):
    """The fixed pool; no connection free in time is DatabaseUnavailable, not a 500."""

    def _do_get(self) -> ConnectionPoolEntry:
        try:
            return super()._do_get()
        except PoolTimeoutError as exc:
            raise DatabaseUnavailable("every database connection of the process is busy") from exc


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
