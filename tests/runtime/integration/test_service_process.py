"""Service processes: migrations per schema, health and readiness, graceful shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import asyncpg
import httpx
import nats
import pytest
from alembic.script import ScriptDirectory

from compgrid_runtime.embedded import EmbeddedNats, free_port, wait_for_port
from compgrid_runtime.migrations import SERVICES, alembic_config
from compgrid_runtime.uow import UnitOfWork
from tests.harness.servers import Servers
from tests.runtime.integration.conftest import ROOT, Sample
from tests.runtime.integration.waiting import wait_until
from tests.runtime.sample_app import (
    NoteAdded,
    add_note,
    counting_handler,
    note_consumer,
    stream_for,
)

pytestmark = [pytest.mark.postgres, pytest.mark.nats]


def plain_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def migrate(real: Servers) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "compgrid_runtime.migrations", "--database-url", real.database_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_migrate_gives_each_service_its_own_schema_and_version_table(real: Servers) -> None:
    first = migrate(real)
    assert first.returncode == 0, first.stderr
    again = migrate(real)
    assert again.returncode == 0, again.stderr
    conn = await asyncpg.connect(plain_dsn(real.database_url))
    try:
        rows = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_name IN ('outbox', 'inbox', 'alembic_version')"
        )
        versions = {
            service: [
                r["version_num"]
                for r in await conn.fetch(f"SELECT version_num FROM {service}.alembic_version")
            ]
            for service in SERVICES
        }
    finally:
        await conn.close()
    found = {(r["table_schema"], r["table_name"]) for r in rows}
    for service in SERVICES:
        assert {(service, "outbox"), (service, "inbox"), (service, "alembic_version")} <= found
    assert not any(schema == "public" for schema, _ in found)
    for service in SERVICES:
        assert versions[service] == [head_revision(service)]


def head_revision(service: str) -> str:
    """The newest migration of ``service``, as Alembic's script directory sees it."""
    script = ScriptDirectory.from_config(alembic_config(f"compgrid_{service}", "postgresql://"))
    head = script.get_current_head()
    assert head is not None
    assert head.startswith(f"{service}_")
    return head


async def test_service_process_is_ready_serves_metrics_and_stops_on_sigterm(real: Servers) -> None:
    assert migrate(real).returncode == 0
    port = free_port()
    env = {
        **os.environ,
        "COMPGRID_AUTH_DATABASE_URL": real.database_url,
        "COMPGRID_AUTH_NATS_URL": real.nats_url,
        "COMPGRID_AUTH_HTTP_PORT": str(port),
    }
    process = subprocess.Popen([sys.executable, "-m", "compgrid_auth"], cwd=ROOT, env=env)
    try:
        await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 30)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/healthz")).status_code == 200
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["ready"] is True
            metrics = await client.get("/metrics")
            assert "compgrid_outbox_pending" in metrics.text
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        if process.poll() is None:
            process.kill()


async def test_shutdown_finishes_in_flight_messages_and_flushes_the_outbox(sample: Sample) -> None:
    app = sample.app()
    spec = note_consumer(sample.run)
    inner = counting_handler(app, sample.run, spec.durable("sample"))
    started = asyncio.Event()
    entered: list[int] = []

    async def slow(event: NoteAdded, uow: UnitOfWork) -> None:
        entered.append(event.note_id)
        started.set()
        await asyncio.sleep(1.0)
        await inner(event, uow)

    app.consumers.add(spec, {NoteAdded: slow})
    await app.start()
    for note_id in range(3):
        await add_note(app, sample.run, note_id)
    await asyncio.wait_for(started.wait(), 20)
    await app.stop()
    assert await sample.count("applied") == len(entered) >= 1
    assert await sample.scalar("SELECT count(*) FROM {s}.outbox WHERE published_at IS NULL") == 0

    restarted = sample.app()
    restarted.consumers.add(spec, {NoteAdded: inner})
    await restarted.start()
    try:

        async def all_three() -> bool:
            return await sample.count("applied") >= 3

        await wait_until(all_three, 20, "remaining notes applied after restart")
        await asyncio.sleep(0.3)
    finally:
        await restarted.stop()
    assert await sample.scalar("SELECT n FROM {s}.tally") == 3


async def test_process_exits_on_sigterm_even_when_nats_is_gone(sample: Sample, tmp_path) -> None:
    private = EmbeddedNats(tmp_path / "nats").start()
    sample.env["COMPGRID_SAMPLE_NATS_URL"] = private.url
    consumer = sample.spawn("consume")
    try:
        # connected and pulling: its durable consumer exists (the start takes seconds under load)
        watcher = await nats.connect(private.url)

        async def pulling() -> bool:
            try:
                found = await watcher.jetstream().consumers_info(stream_for(sample.run).name)
            except Exception:
                return False
            return len(found) > 0

        await wait_until(pulling, 60, "the consumer is pulling")
        await watcher.close()
        await asyncio.sleep(0.5)
        private.stop(kill=True)
        await asyncio.sleep(1.0)
        consumer.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(consumer.wait, 60) == 0
    finally:
        private.stop()


async def test_process_exits_on_sigterm_while_still_starting(sample: Sample) -> None:
    # NATS is not there at all: the start keeps retrying the connection when the signal comes.
    sample.env["COMPGRID_SAMPLE_NATS_URL"] = f"nats://127.0.0.1:{free_port()}"
    consumer = sample.spawn("consume")
    try:
        # long enough for the imports and the signal handlers even on a loaded machine; the
        # connection is still being retried then (there is no NATS)
        await asyncio.sleep(8.0)
        assert consumer.poll() is None, "the process must still be trying to start"
        consumer.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(consumer.wait, 30) == 0
    finally:
        if consumer.poll() is None:
            consumer.kill()
