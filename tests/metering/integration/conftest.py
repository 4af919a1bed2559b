"""Metering in-process (or as its own processes) on real NATS JetStream, Redis and Postgres.

Tests play the provisioner: they publish ``UsageTick``s to the USAGE stream exactly as the
provisioner's outbox relay does, and read the counters back from Redis.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import nats
import pytest
from nats.aio.client import Client as NatsClient
from redis.asyncio import Redis

from compgrid_events.base import utc_now
from compgrid_events.provisioner import InstanceUsage, UsageTick
from compgrid_metering.adapters.counters import Counters
from compgrid_metering.bootstrap import build
from compgrid_metering.config import Settings
from compgrid_metering.use_cases.deps import Deps
from compgrid_runtime.app import ServiceApp
from tests.harness.servers import Servers, with_service_schema
from tests.runtime.integration.waiting import wait_until


def tag() -> str:
    """A short random suffix for names that must be unique in the run."""
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
async def metering_schema(real: Servers) -> Servers:
    """The run's database with the metering schema, and every stream in place."""
    return await with_service_schema(real, "compgrid_metering")


def metering_settings(real: Servers, prefix: str, **overrides: Any) -> Settings:
    """Settings of a metering process of one test (its own Redis key prefix)."""
    values: dict[str, Any] = {
        "database_url": real.database_url,
        "nats_url": real.nats_url,
        "redis_url": real.redis_url,
        "log_level": "WARNING",
        "redis_prefix": prefix,
        "outbox_poll_interval_s": 0.05,
    }
    values.update(overrides)
    return Settings(**values)


def metering_environment(real: Servers, prefix: str, **overrides: Any) -> dict[str, str]:
    """The same settings as environment variables, for a metering process of its own."""
    settings = metering_settings(real, prefix, **overrides)
    env = dict(os.environ)
    for name in ("database_url", "nats_url", "redis_url", "redis_prefix"):
        env[f"COMPGRID_METERING_{name.upper()}"] = str(getattr(settings, name))
    for name, value in overrides.items():
        env[f"COMPGRID_METERING_{name.upper()}"] = str(value)
    env["COMPGRID_METERING_HTTP_PORT"] = "0"
    return env


@contextlib.asynccontextmanager
async def running_metering(
    real: Servers, prefix: str, **overrides: Any
) -> AsyncIterator[tuple[ServiceApp, Deps]]:
    """Start a metering process in this one; stop it after."""
    app, deps = build(metering_settings(real, prefix, **overrides))
    await app.start()
    try:
        yield app, deps
    finally:
        await app.stop()


@dataclass
class Datacenter:
    """A datacenter the test plays the provisioner for: it sends usage ticks."""

    name: str
    nc: NatsClient
    sent: list[UsageTick] = field(default_factory=list)

    async def send(self, tick: UsageTick, *, msg_id: str | None = None) -> None:
        """Publish a tick as the provisioner's relay does (the event id dedups a re-publish)."""
        await self.nc.jetstream().publish(
            tick.subject, tick.to_json(), headers={"Nats-Msg-Id": msg_id or str(tick.event_id)}
        )
        self.sent.append(tick)

    def tick(
        self, host: str, samples: list[InstanceUsage], tick_id: str | None = None
    ) -> UsageTick:
        """A usage tick of one host of this datacenter."""
        return UsageTick(
            datacenter=self.name,
            host=host,
            tick_id=tick_id or f"{self.name}/{host}/{uuid.uuid4()}",
            samples=tuple(samples),
        )


def sample(
    instance_id: UUID,
    started_at: datetime,
    seconds: float,
    *,
    project_id: UUID,
    budget_code_id: UUID,
    vcpus: int = 2,
    memory_mib: int = 2048,
    gpus: dict[str, int] | None = None,
    cpu_time_ns: int = 0,
) -> InstanceUsage:
    """One instance's usage over ``[started_at, started_at + seconds)``."""
    return InstanceUsage(
        instance_id=instance_id,
        project_id=project_id,
        budget_code_id=budget_code_id,
        started_at=started_at,
        ended_at=started_at + timedelta(seconds=seconds),
        vcpus=vcpus,
        memory_mib=memory_mib,
        gpus=gpus or {},
        cpu_time_ns=cpu_time_ns,
    )


@pytest.fixture
async def datacenter(metering_schema: Servers) -> AsyncIterator[Datacenter]:
    """A fresh datacenter name to send ticks from."""
    client = await nats.connect(metering_schema.nats_url)
    yield Datacenter(f"dc-{tag()}", client)
    await client.close()


@pytest.fixture
def prefix() -> str:
    """A Redis key prefix of this test's own."""
    return f"test:{tag()}:"


@pytest.fixture
async def counters(metering_schema: Servers, prefix: str) -> AsyncIterator[Counters]:
    """The test's counters, read straight from Redis; its keys are removed after."""
    redis = Redis.from_url(metering_schema.redis_url)
    found = Counters(redis, prefix, 3600)
    # A fresh deployment's counters are complete; the tests share one database, where other
    # tests' rollups would otherwise make a new prefix look like Redis lost its data.
    await found.mark_intact()
    yield found
    keys = [k async for k in redis.scan_iter(match=f"{prefix}*", count=1000)]
    for start in range(0, len(keys), 500):
        await redis.delete(*keys[start : start + 500])
    await redis.aclose()


async def lose_counters(counters: Counters, prefix: str, *, hold_rebuild: bool = False) -> None:
    """Redis loses every key of the prefix at once; with ``hold_rebuild`` the rebuild lock is
    taken in the same transaction (as if another process were rebuilding), so metering cannot
    rebuild until the test lets go (``let_rebuild``)."""
    keys = [k async for k in counters.redis.scan_iter(match=f"{prefix}*", count=1000)]
    async with counters.redis.pipeline(transaction=True) as pipe:
        for start in range(0, len(keys), 500):
            pipe.delete(*keys[start : start + 500])
        if hold_rebuild:
            pipe.set(counters.key("rebuilding"), "held-by-the-test", px=120_000)
        await pipe.execute()


async def let_rebuild(counters: Counters) -> None:
    """Let go of the rebuild lock ``lose_counters`` took."""
    await counters.redis.delete(counters.key("rebuilding"))


async def consumer_drained(nc: NatsClient, durable: str = "metering-usage") -> bool:
    """True when the metering consumer has acknowledged everything in the USAGE stream."""
    info = await nc.jetstream().consumer_info("USAGE", durable)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def wait_drained(nc: NatsClient, timeout_s: float = 30) -> None:
    """Wait until metering has applied (and acknowledged) every tick sent so far."""

    async def drained() -> bool:
        return await consumer_drained(nc)

    await wait_until(drained, timeout_s, "metering consumed every tick")


def hours_ago(hours: int) -> datetime:
    """The start of the UTC hour ``hours`` before the current one."""
    now = utc_now()
    return now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours)
