"""The connection pool keeps its connections, replaces one the server has closed, and opens no
more than the service's setting allows, each named after its service."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from compgrid_metering.bootstrap import build
from compgrid_metering.config import Settings
from compgrid_runtime.db import DatabaseUnavailable, create_engine
from tests.harness.servers import Servers
from tests.runtime.integration.waiting import wait_until

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


async def test_a_service_opens_no_more_connections_than_its_pool_setting(
    real: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMPGRID_METERING_DB_POOL_SIZE", "3")
    app, _ = build(Settings(database_url=real.database_url))
    held: list[tuple[int, str]] = []
    release = asyncio.Event()

    async def hold() -> None:
        async with app.engine.connect() as conn:
            row = await conn.execute(
                text("SELECT pg_backend_pid(), current_setting('application_name')")
            )
            pid, name = row.one()
            held.append((int(pid), str(name)))
            await release.wait()

    try:
        users = [asyncio.create_task(hold()) for _ in range(6)]

        async def pool_full() -> bool:
            return len(held) >= 3

        await wait_until(pool_full, 20, "three connections in use")
        assert len(held) == 3  # the other three wait for one of them
        release.set()
        await asyncio.gather(*users)
    finally:
        await app.engine.dispose()
    assert len(held) == 6
    assert len({pid for pid, _ in held}) == 3
    assert {name for _, name in held} == {"compgrid-metering"}


async def test_no_connection_free_in_time_is_database_unavailable(real: Servers) -> None:
    engine = create_engine(real.database_url, pool_size=1, pool_timeout_s=0.2)
    try:
        async with engine.connect():
            with pytest.raises(DatabaseUnavailable) as caught:
                async with engine.connect():
                    pass
        assert caught.value.status == 503
        assert await _backend(engine)  # the connection is free again
    finally:
        await engine.dispose()
