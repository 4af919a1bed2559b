"""Shared benchmark plumbing: real servers for a run, timing, and the one-line JSON result."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg

from compgrid_runtime.embedded import EmbeddedNats

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextlib.asynccontextmanager
async def bench_servers() -> AsyncIterator[tuple[str, str]]:
    """Yield (database_url, nats_url): a fresh database and, unless given, a fresh NATS."""
    admin = os.environ.get("COMPGRID_BENCH_DATABASE_URL", LOCAL_POSTGRES)
    name = f"compgrid_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    database_url = admin.rpartition("/")[0] + f"/{name}"
    with tempfile.TemporaryDirectory() as tmp:
        nats = None
        nats_url = os.environ.get("COMPGRID_BENCH_NATS_URL")
        if not nats_url:
            nats = EmbeddedNats(Path(tmp) / "nats").start()
            nats_url = nats.url
        try:
            yield database_url, nats_url
        finally:
            if nats is not None:
                nats.stop()
            conn = await asyncpg.connect(admin)
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.close()


def percentile(values: list[float], q: float) -> float:
    """Return the q-th percentile (0..100) by nearest rank."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


def report(
    bench: str, value: float, unit: str, baseline: float, ratio: float, **extra: Any
) -> None:
    """Print the benchmark's one JSON line (the last line on stdout)."""
    line = {
        "bench": bench,
        "value": round(value, 3),
        "unit": unit,
        "baseline": round(baseline, 3),
        "ratio": round(ratio, 3),
        **extra,
    }
    print(json.dumps(line), flush=True)
