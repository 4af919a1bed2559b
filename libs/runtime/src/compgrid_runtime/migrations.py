"""Alembic per service: each service's migrations see only its own schema and keep their
version table inside it. ``compgrid-migrate`` (``just migrate``) upgrades every service.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
from typing import Any

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from compgrid_runtime.db import NAMING_CONVENTION
from compgrid_runtime.messaging_tables import add_messaging_tables

SERVICES = ("auth", "inventory", "provisioner", "metering", "billing")
VERSION_TABLE = "alembic_version"


def alembic_config(package: str, database_url: str) -> Config:
    """Return the Alembic configuration of a service package such as ``compgrid_auth``."""
    config = Config()
    config.set_main_option("script_location", f"{package}:migrations")
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.set_main_option("file_template", "%%(year)d_%%(month).2d_%%(day).2d_%%(rev)s_%%(slug)s")
    return config


def upgrade(package: str, database_url: str, revision: str = "head") -> None:
    """Upgrade one service's schema (blocking; run it in a thread from async code)."""
    command.upgrade(alembic_config(package, database_url), revision)


def _include(schema: str) -> Any:
    def include_object(obj: Any, name: str, type_: str, reflected: bool, compare_to: Any) -> bool:
        if type_ == "table":
            return bool(obj.schema == schema)
        return True

    return include_object


def _run(connection: Connection, metadata: MetaData) -> None:
    schema = str(metadata.schema)
    connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table_schema=schema,
        version_table=VERSION_TABLE,
        include_schemas=True,
        include_object=_include(schema),
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online(url: str, metadata: MetaData) -> None:
    engine = create_async_engine(
        url.replace("postgresql://", "postgresql+asyncpg://", 1), poolclass=pool.NullPool
    )
    async with engine.begin() as conn:
        await conn.run_sync(_run, metadata)
    await engine.dispose()


def run_env(metadata: MetaData) -> None:
    """Body of every service's ``migrations/env.py``."""
    url = context.config.get_main_option("sqlalchemy.url") or ""
    asyncio.run(_run_online(url, metadata))


def create_messaging_tables(schema: str) -> None:
    """Create the outbox and inbox of ``schema`` inside a migration."""
    from alembic import op

    metadata = MetaData(schema=schema, naming_convention=NAMING_CONVENTION)
    add_messaging_tables(metadata)
    metadata.create_all(op.get_bind())


def main() -> None:
    """``compgrid-migrate [SERVICE ...]``: upgrade the given services (all by default)."""
    parser = argparse.ArgumentParser(prog="compgrid-migrate")
    parser.add_argument("services", nargs="*", default=list(SERVICES))
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    for service in args.services:
        settings = importlib.import_module(f"compgrid_{service}.config").Settings()
        upgrade(f"compgrid_{service}", args.database_url or settings.database_url)
        print(f"{service}: schema up to date")


if __name__ == "__main__":
    main()
