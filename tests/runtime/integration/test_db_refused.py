"""A database that refuses connections: each request is answered 503 ``database_unavailable``,
the process stays up and says so once, and answers again as soon as connections are accepted."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy import func, select

from compgrid_runtime.app import ServiceApp
from compgrid_runtime.db import DatabaseUnavailable, create_engine
from compgrid_runtime.embedded import free_port
from compgrid_runtime.rpc import Caller, RemoteError, call
from tests.harness.servers import Servers
from tests.runtime.integration.conftest import Sample
from tests.runtime.integration.waiting import wait_until
from tests.runtime.sample_app import SampleSettings, build_app, sample_metadata

pytestmark = [pytest.mark.postgres, pytest.mark.nats]

REFUSING = "database refuses connections"
ACCEPTING = "database accepts connections again"


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@pytest.fixture
async def admin(real: Servers) -> AsyncIterator[asyncpg.Connection]:
    """A superuser connection to the run's database."""
    conn = await asyncpg.connect(_plain(real.database_url))
    yield conn
    await conn.close()


@pytest.fixture
async def role(sample: Sample, admin: asyncpg.Connection) -> AsyncIterator[str]:
    """A login role of this test's own, allowed the sample schema; dropped after."""
    name = f"refused_{sample.run}"
    schema = f"sample_{sample.run}"
    await admin.execute(f'CREATE ROLE "{name}" LOGIN')
    await admin.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{name}"')
    await admin.execute(f'GRANT ALL ON ALL TABLES IN SCHEMA "{schema}" TO "{name}"')
    await admin.execute(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA "{schema}" TO "{name}"')
    yield name
    await admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", name
    )
    await admin.execute(f'DROP OWNED BY "{name}"')
    await admin.execute(f'DROP ROLE "{name}"')


async def _notes(app: ServiceApp, run: str) -> Any:
    table = sample_metadata(run).tables[f"sample_{run}.note"]

    async def count(_: Caller, __: Any) -> int:
        async with app.unit_of_work() as uow:
            return int(
                (await uow.session.execute(select(func.count()).select_from(table))).scalar_one()
            )

    return count


async def _refusal(nc: NatsClient, operation: str) -> RemoteError | None:
    try:
        await call(nc, "sample", operation, timeout_s=10)
    except RemoteError as exc:
        return exc
    return None


async def test_a_refusing_database_is_a_503_and_the_process_answers_again_once_it_accepts(
    sample: Sample,
    real: Servers,
    role: str,
    admin: asyncpg.Connection,
    nc: NatsClient,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = real.database_url.replace("postgres@", f"{role}@", 1)
    settings = SampleSettings(
        database_url=url, nats_url=real.nats_url, db_pool_size=2, shutdown_grace_s=5
    )
    app = build_app(sample.run, settings)
    operation = f"notes_{sample.run}.count"
    app.rpc.route(operation, await _notes(app, sample.run), public=True)
    await app.start()  # its log lines go to (captured) stderr
    try:
        assert await call(nc, "sample", operation, timeout_s=10) == 0

        # the role may open no more connections, and the ones the pool keeps are gone
        await admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT 0')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
        )

        async def refused() -> bool:
            # a pooled connection the driver has not yet seen closed fails its statement once
            return getattr(await _refusal(nc, operation), "status", None) == 503

        await wait_until(refused, 20, "requests answered 503")
        refusals = [await _refusal(nc, operation) for _ in range(3)]
        assert all(r is not None for r in refusals), refusals
        assert {(r.status, r.code) for r in refusals if r is not None} == {
            (503, "database_unavailable")
        }

        await admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT -1')

        async def answers() -> bool:
            return await _refusal(nc, operation) is None

        await wait_until(answers, 20, "the process answers again")
        assert await call(nc, "sample", operation, timeout_s=10) == 0
    finally:
        await app.stop()
    lines = capsys.readouterr().err.splitlines()
    said = [json.loads(line) for line in lines if line[:1] == "{"]
    refusing = [line for line in said if line["event"].startswith(REFUSING)]
    assert len(refusing) == 1, said  # once, not once per request
    assert "too many connections" in refusing[0]["reason"]
    assert [line["event"] for line in said].count(ACCEPTING) == 1, said


async def test_nothing_listening_is_database_unavailable() -> None:
    engine = create_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/none", pool_size=1)
    try:
        with pytest.raises(DatabaseUnavailable) as caught:
            async with engine.connect():
                pass
    finally:
        await engine.dispose()
    assert caught.value.status == 503
    assert caught.value.code == "database_unavailable"
