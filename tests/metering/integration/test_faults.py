"""Metering under faults: its process SIGKILLed mid-ingest, its Redis restarted mid-ingest.

Both tests send ticks whose every total is known exactly (per instance, project and budget code;
intervals crossing UTC hours, odd CPU times, a few GPUs) plus some ticks re-sent as new messages,
break something while some ticks are counted and others are not, and then require every total to
equal exactly what was sent: nothing lost, nothing counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from compgrid_events.provisioner import InstanceUsage, UsageTick
from compgrid_metering.adapters.counters import Counters, Usage
from compgrid_runtime.embedded import free_port, port_answers
from tests.harness.servers import Servers
from tests.metering.integration.conftest import (
    Datacenter,
    consumer_drained,
    hours_ago,
    metering_environment,
    running_metering,
    wait_drained,
)
from tests.runtime.integration.waiting import wait_until

OUTAGE_S = 10.0

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis]

DURABLE = "metering-usage"
KILLED = -signal.SIGKILL
ROUND = timedelta(seconds=40)
"""Rounds of samples start 40 s apart, so 250 rounds span 2 h 46 min."""


@dataclass
class Fleet:
    """Instances spread over hosts, projects and budget codes, and what they were sent."""

    hosts: int
    per_host: int
    start: datetime
    instances: list[UUID] = field(default_factory=list)
    projects: list[UUID] = field(default_factory=lambda: [uuid.uuid4() for _ in range(3)])
    budgets: list[UUID] = field(default_factory=lambda: [uuid.uuid4() for _ in range(6)])
    expected: dict[tuple[str, UUID], Usage] = field(default_factory=dict)
    hours: dict[UUID, set[datetime]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.instances = [uuid.uuid4() for _ in range(self.hosts * self.per_host)]

    def samples(self, host: int, round_: int) -> list[InstanceUsage]:
        """One host's samples of one round; every duration and CPU time is exact and odd."""
        found = []
        for j in range(self.per_host):
            n = host * self.per_host + j
            # 1.5 s before the round: the rounds at 0 h, 1 h and 2 h cross an hour boundary
            started = self.start + round_ * ROUND - timedelta(microseconds=1_500_000 - 7 * j)
            length = timedelta(
                microseconds=2_000_000 + ((7 * n + round_) % 5) * 1_000_000 + 123 * j
            )
            found.append(
                InstanceUsage(
                    instance_id=self.instances[n],
                    project_id=self.projects[n % 3],
                    budget_code_id=self.budgets[n % 6],
                    started_at=started,
                    ended_at=started + length,
                    vcpus=1 + n % 8,
                    memory_mib=512 * (1 + n % 4) + n,
                    gpus={"a100": 1 + n % 2} if n % 10 == 0 else {},
                    cpu_time_ns=1_000_003 * (n + 1) + 7 * round_ + j % 3,
                )
            )
        return found

    def tick(self, datacenter: Datacenter, host: int, round_: int) -> UsageTick:
        """A tick of one round of one host; its expected usage is added to the totals."""
        samples = self.samples(host, round_)
        for s in samples:
            us = (s.ended_at - s.started_at) // timedelta(microseconds=1)
            usage = Usage(
                running_us=us,
                vcpu_us=us * s.vcpus,
                memory_mib_us=us * s.memory_mib,
                cpu_ns=s.cpu_time_ns,
                gpu_us={model: us * count for model, count in s.gpus.items()},
            )
            for key in (("i", s.instance_id), ("p", s.project_id), ("b", s.budget_code_id)):
                self.expected.setdefault(key, Usage()).add(usage)
            hours = self.hours.setdefault(s.project_id, set())
            hours.add(s.started_at.replace(minute=0, second=0, microsecond=0))
            hours.add(s.ended_at.replace(minute=0, second=0, microsecond=0))
        return datacenter.tick(f"h{host}", samples, tick_id=f"{datacenter.name}/h{host}/{round_}")

    def ticks(self, datacenter: Datacenter, rounds: int) -> list[UsageTick]:
        """Every host's tick of every round, round by round."""
        return [self.tick(datacenter, h, r) for r in range(rounds) for h in range(self.hosts)]

    async def assert_counted_exactly(self, counters: Counters) -> None:
        """Every instance, project and budget code holds exactly what was sent."""
        wrong = {}
        for kind, owner in self.expected:
            total = await counters.total(kind, owner)
            if total != self.expected[kind, owner]:
                wrong[kind, owner] = (total, self.expected[kind, owner])
        assert not wrong, f"{len(wrong)} totals differ, e.g. {next(iter(wrong.items()))}"
        assert len(self.expected) == len(self.instances) + len(self.projects) + len(self.budgets)
        for project in self.projects:
            assert set(await counters.hours("ph", project)) == self.hours[project]
        assert len(self.hours[self.projects[0]]) >= 3, "the samples cross hour boundaries"


async def stream_first_free_seq(js: JetStreamContext) -> int:
    """The USAGE stream's last sequence (ticks sent from now on come after it), once metering's
    consumer, if there is one yet, has acknowledged everything before it."""
    with contextlib.suppress(NotFoundError):
        info = await js.consumer_info("USAGE", DURABLE)
        assert info.num_pending == info.num_ack_pending == 0, "an earlier test left ticks behind"
    return (await js.stream_info("USAGE")).state.last_seq


async def acked_since(js: JetStreamContext, since: int) -> int:
    """How many messages after ``since`` the metering consumer has acknowledged (ack floor)."""
    try:
        info = await js.consumer_info("USAGE", DURABLE)
    except NotFoundError:
        return 0
    return max(0, info.ack_floor.stream_seq - since)


async def applied_ticks(redis: Redis, prefix: str, ticks: list[UsageTick]) -> int:
    """How many of the test's ticks the counters hold as applied (the shared durable may also
    hand this prefix ticks other tests left in the stream)."""
    pipe = redis.pipeline(transaction=False)
    for tick_id in {t.tick_id for t in ticks}:
        pipe.exists(f"{prefix}dedup:{tick_id}")
    return sum(await pipe.execute())


def unique_ticks(sent: list[UsageTick], messages: int) -> int:
    """How many distinct ticks the first ``messages`` messages sent carry (the stream keeps
    them in the order they were sent)."""
    return len({t.tick_id for t in sent[:messages]})


async def send_all(
    datacenter: Datacenter, ticks: list[UsageTick], *, resend_every: int, pause_s: float = 0
) -> None:
    """Send the ticks in order; after every ``resend_every``-th, re-send an earlier one as a new
    message (the stream keeps it; metering must recognise the tick id)."""
    for i, tick in enumerate(ticks):
        await datacenter.send(tick)
        if i % resend_every == resend_every - 1:
            await datacenter.send(ticks[i - resend_every // 2], msg_id=str(uuid.uuid4()))
        if pause_s:
            await asyncio.sleep(pause_s)


def spawn_metering(real: Servers, prefix: str, log: Path) -> subprocess.Popen[bytes]:
    """``python -m compgrid_metering`` as a process of its own, logging to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "compgrid_metering"],
            env=metering_environment(real, prefix),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@contextlib.contextmanager
def reaped(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """Kill the process (only this one, by its id) if the test leaves it running."""
    try:
        yield process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)


async def test_metering_sigkilled_in_the_middle_of_100_000_samples_counts_each_exactly_once(
    metering_schema: Servers,
    datacenter: Datacenter,
    prefix: str,
    counters: Counters,
    tmp_path: Path,
) -> None:
    fleet = Fleet(hosts=4, per_host=100, start=hours_ago(3))
    ticks = fleet.ticks(datacenter, 250)  # 1,000 ticks of 100 samples
    assert sum(len(t.samples) for t in ticks) == 100_000
    js = datacenter.nc.jetstream()
    since = await stream_first_free_seq(js)
    # every tick is in the stream before metering starts: it fetches full batches (256)
    await send_all(datacenter, ticks, resend_every=10)
    log = tmp_path / "metering.log"
    with reaped(spawn_metering(metering_schema, prefix, log)) as doomed:
        # Killed the moment the batch holding the 400th tick is counted: a fetched batch (256
        # messages) is counted in one script call, and only then is each message acknowledged.
        # Redis runs the script alone, so this EXISTS, waiting behind it, is answered when it
        # ends: the kill lands while the batch's acknowledgements are going out.
        marker = counters.key("dedup", ticks[400].tick_id)
        deadline = asyncio.get_running_loop().time() + 30
        while not await counters.redis.exists(marker):
            assert doomed.poll() is None, log.read_text()[-3000:]
            assert asyncio.get_running_loop().time() < deadline, "the 400th tick was not counted"
            await asyncio.sleep(0.002)
        os.kill(doomed.pid, signal.SIGKILL)
        assert await asyncio.to_thread(doomed.wait, 10) == KILLED
    acked_at_kill = await acked_since(js, since)
    applied_at_kill = await applied_ticks(counters.redis, prefix, ticks)
    # a few more ticks re-sent as new messages, to the process that takes over
    for tick in ticks[:50]:
        await datacenter.send(tick, msg_id=str(uuid.uuid4()))
    messages = len(datacenter.sent)
    assert messages == len(ticks) + 100 + 50
    assert 0 < acked_at_kill < messages, "the kill came after some acks and before the last"
    assert 0 < applied_at_kill < len(ticks), "the kill came while ticks were left to count"
    unacked = applied_at_kill - unique_ticks(datacenter.sent, acked_at_kill)
    assert unacked >= 10, "some ticks were counted and not acknowledged: they come again"
    print(
        f"at the kill: {acked_at_kill}/{messages} messages acked, {applied_at_kill} ticks"
        f" applied, {unacked} of them not acknowledged"
    )

    with reaped(spawn_metering(metering_schema, prefix, log)) as survivor:
        # what the dead process held unacknowledged comes back after the ack wait (10 s)
        async def drained() -> bool:
            assert survivor.poll() is None, log.read_text()[-3000:]
            return await acked_since(js, since) == messages and await consumer_drained(
                datacenter.nc
            )

        await wait_until(drained, 60, "the new metering process consumed every tick")
        survivor.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(survivor.wait, 30) == 0, log.read_text()[-3000:]

    await fleet.assert_counted_exactly(counters)
    assert await applied_ticks(counters.redis, prefix, ticks) == len(ticks)
    print(f"ticks recognised as counted before: {log.read_text().count('tick counted before')}")


@dataclass
class OwnRedis:
    """A redis-server of the test's own that keeps every acknowledged write on disk."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        with (self.directory / "redis.log").open("ab") as out:
            self.process = subprocess.Popen(
                [
                    "/usr/bin/redis-server",
                    *("--port", str(self.port), "--bind", "127.0.0.1"),
                    *("--dir", str(self.directory)),
                    *("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        client = Redis.from_url(self.url)
        try:

            async def answers() -> bool:
                assert self.process is not None
                assert self.process.poll() is None, (self.directory / "redis.log").read_text()
                if not port_answers("127.0.0.1", self.port, 0.2):
                    return False
                with contextlib.suppress(Exception):
                    return bool(await client.ping())
                return False

            await wait_until(answers, 15, "redis-server answers PING")
        finally:
            await client.aclose()

    def kill(self, sig: signal.Signals) -> int:
        assert self.process is not None
        os.kill(self.process.pid, sig)
        code = self.process.wait(15)
        self.process = None
        return code


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[OwnRedis]:
    """A redis-server started for the test; stopped (by its pid) after."""
    server = OwnRedis(tmp_path / "redis")
    server.directory.mkdir()
    await server.start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.kill(signal.SIGKILL)


def messages_counted(outcome: str) -> float:
    """This process's metering consumer's messages with an outcome so far."""
    found = REGISTRY.get_sample_value(
        "compgrid_messages_total", {"consumer": DURABLE, "outcome": outcome}
    )
    return found or 0.0


async def dead_letters_of(js: JetStreamContext, datacenter: Datacenter) -> list[Msg]:
    """The metering dead-letters that are ticks of this datacenter."""
    letters = await js.pull_subscribe("deadletter.metering.>", stream="DEADLETTER")
    found: list[Msg] = []
    with contextlib.suppress(TimeoutError):
        while batch := await letters.fetch(100, timeout=1):
            found += batch
    await letters.unsubscribe()
    return [m for m in found if datacenter.name.encode() in m.data]


async def test_redis_restarted_during_ingest_loses_and_doubles_nothing(
    metering_schema: Servers, datacenter: Datacenter, prefix: str, own_redis: OwnRedis
) -> None:
    fleet = Fleet(hosts=2, per_host=100, start=hours_ago(3))
    ticks = fleet.ticks(datacenter, 100)  # 200 ticks of 100 samples
    assert sum(len(t.samples) for t in ticks) == 20_000
    js = datacenter.nc.jetstream()
    since = await stream_first_free_seq(js)
    reader = Redis.from_url(own_redis.url)
    counters = Counters(reader, prefix, 3600)
    retried_before = messages_counted("retried")
    dead_before = messages_counted("dead_lettered")
    try:
        async with running_metering(metering_schema, prefix, redis_url=own_redis.url):
            sending = asyncio.create_task(
                send_all(datacenter, ticks, resend_every=10, pause_s=0.02)
            )
            try:

                async def some_applied() -> bool:
                    return await applied_ticks(reader, prefix, ticks) >= 50

                await wait_until(some_applied, 30, "50 ticks counted")
                applied_at_kill = await applied_ticks(reader, prefix, ticks)
                assert own_redis.kill(signal.SIGKILL) == KILLED
                acked_at_kill = await acked_since(js, since)
                sent_at_kill = len(datacenter.sent)
                # longer than five deliveries' backoff (0.5 + 1 + 2 + 4 s): ticks must be
                # retried for as long as Redis is away, not dead-lettered
                await asyncio.sleep(OUTAGE_S)
                await own_redis.start()
                await reader.connection_pool.disconnect()  # its connection died with the server
                # what Redis had counted (so written to its append-only file) is still there,
                # in particular every tick acknowledged before the kill
                applied_at_restart = await applied_ticks(reader, prefix, ticks)
                assert applied_at_restart >= applied_at_kill
                assert applied_at_restart >= unique_ticks(datacenter.sent, acked_at_kill)
                await sending
            finally:
                sending.cancel()
            messages = len(datacenter.sent)
            assert messages == len(ticks) + 20
            assert 0 < applied_at_kill < len(ticks), "Redis went away in the middle of the ticks"
            assert 0 < acked_at_kill < messages, "Redis went away in the middle of the ticks"
            assert sent_at_kill < messages, "ticks kept coming while Redis was away"
            await wait_drained(datacenter.nc, 60)
        retried = messages_counted("retried") - retried_before
        dead = messages_counted("dead_lettered") - dead_before
        print(
            f"at the kill: {applied_at_kill}/{len(ticks)} ticks applied, {acked_at_kill}/"
            f"{messages} messages acked; {retried:.0f} deliveries retried"
        )
        assert retried > 0, "ticks failed while Redis was away and were delivered again"
        letters = await dead_letters_of(js, datacenter)
        reasons = "; ".join(str(dict((m.headers or {}).items())) for m in letters[:3])
        assert not letters, f"{len(letters)} ticks dead-lettered while Redis restarted: {reasons}"
        assert dead == 0, f"{dead:.0f} ticks dead-lettered while Redis restarted"
        assert await acked_since(js, since) == messages
        await fleet.assert_counted_exactly(counters)
        assert await applied_ticks(reader, prefix, ticks) == len(ticks)
    finally:
        await reader.aclose()
