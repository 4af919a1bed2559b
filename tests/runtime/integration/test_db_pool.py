"""The connection pool keeps its connections and replaces one the server has closed."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from compgrid_runtime.db import create_engine
from tests.harness.servers import Servers

pytestmark = [pytest.mark.postgres]


async def _backend(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def test_a_connection_is_kept_between_uses(real: Servers) -> None:
    engine = create_engine(real.database_url, pool_size=1)
    try:
        assert await _backend(engine) == await _backend(engine)
    finally:
        await engine.dispose()


async def test_a_connection_the_server_closed_is_replaced_without_an_error(real: Servers) -> None:
    engine = create_engine(real.database_url, pool_size=1)
    try:
        first = await _backend(engine)
        admin = await asyncpg.connect(real.database_url.replace("+asyncpg", ""))
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", first)
        finally:
            await admin.close()
        await asyncio.sleep(0.2)  # the driver reads the server's goodbye
        second = await _backend(engine)
        assert second != first
    finally:
        await engine.dispose()
