"""Fixtures for backbone tests: a sample service schema per test."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import func, select

from compgrid_runtime.app import ServiceApp
from compgrid_runtime.db import create_engine, ensure_schema
from tests.harness.servers import Servers
from tests.runtime.sample_app import SampleSettings, build_app, sample_metadata

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Sample:
    """One test's sample service: its run token, settings and helpers."""

    run: str
    settings: SampleSettings
    env: dict[str, str]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def app(self) -> ServiceApp:
        return build_app(self.run, self.settings)

    def spawn(
        self, *args: str, fault: str | None = None, after: int = 0
    ) -> subprocess.Popen[bytes]:
        env = dict(self.env)
        if fault:
            env |= {"COMPGRID_FAULT_POINT": fault, "COMPGRID_FAULT_AFTER": str(after)}
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.runtime.sample_app", *args, "--run", self.run],
            cwd=ROOT,
            env=env,
        )
        self.processes.append(process)
        return process

    def kill_leftovers(self) -> None:
        """Kill every process this test started that is still running."""
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)

    async def count(self, table: str, where: Callable[..., object] | None = None) -> int:
        metadata = sample_metadata(self.run)
        t = metadata.tables[f"sample_{self.run}.{table}"]
        engine = create_engine(self.settings.database_url)
        try:
            async with engine.connect() as conn:
                query = select(func.count()).select_from(t)
                return int((await conn.execute(query)).scalar_one())
        finally:
            await engine.dispose()

    async def scalar(self, sql: str) -> object:
        from sqlalchemy import text

        engine = create_engine(self.settings.database_url)
        try:
            async with engine.connect() as conn:
                return (await conn.execute(text(sql.format(s=f"sample_{self.run}")))).scalar()
        finally:
            await engine.dispose()


@pytest.fixture
async def sample(real: Servers) -> AsyncIterator[Sample]:
    """A sample service with its own schema, stream and subjects for this test."""
    run = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "COMPGRID_SAMPLE_DATABASE_URL": real.database_url,
        "COMPGRID_SAMPLE_NATS_URL": real.nats_url,
        "COMPGRID_SAMPLE_LOG_JSON": "true",
        "COMPGRID_SAMPLE_OUTBOX_POLL_INTERVAL_S": "0.1",
        "COMPGRID_SAMPLE_SHUTDOWN_GRACE_S": "5",
    }
    settings = SampleSettings(
        database_url=real.database_url,
        nats_url=real.nats_url,
        outbox_poll_interval_s=0.1,
        shutdown_grace_s=5,
    )
    metadata = sample_metadata(run)
    engine = create_engine(real.database_url)
    await ensure_schema(engine, f"sample_{run}")
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    await engine.dispose()
    found = Sample(run, settings, env)
    yield found
    found.kill_leftovers()
