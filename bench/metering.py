"""Usage samples per second into the metering counters, against two raw baselines.

Setup, one process on fresh servers (``bench_servers``), Redis from ``COMPGRID_BENCH_REDIS_URL``
(default the local one) under a prefix of the run's own, deleted afterwards. ``SAMPLES`` usage
samples (default 100,000) in ticks of ``PER_TICK`` (100) samples — 500 instances in 10 projects
and 10 budget codes, one-minute intervals over two hours — are published to the USAGE stream
first (not timed), as the provisioners' relays publish them.

Ours: the metering service in-process with production settings (logs at WARNING), its durable
consumer starting on the full stream: the clock runs until every tick is applied (claimed and
counted in Redis by the Lua script) and acknowledged. Then every instance's and project's
totals are compared with what was sent: ``lost`` and ``double_counted`` count the samples
missing or counted twice (both must be 0).

Baseline (a), same run, same stream: a raw nats-py pull consumer fetching 256 at a time,
``json.loads`` of each message and an ack — the bus and parsing alone. Baseline (b): raw
redis-py pipelined ``HINCRBY`` of exactly the counters ours increments (per sample and hour:
running, vCPU, memory and CPU on the instance's, project's and budget code's hash), pipelines
of 100 ticks' increments — Redis alone, no dedup, no parsing.

Lag: afterwards ticks are published at half of ours' measured rate for ``LAG_S`` seconds while
metering runs; each tick's lag runs from its publish until the consumer's acknowledgement floor
passes it (polled every 20 ms). ``lag_p99_s`` (target < 2 s).

Fields: ``value`` samples/s; ``baseline`` raw pull-loop samples/s; ``ratio`` (target ≥ 0.5);
``redis_baseline`` raw HINCRBY samples/s; ``redis_ratio`` (target ≥ 0.6); ``lag_p99_s``;
``lost``; ``double_counted``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.errors import TimeoutError as NatsTimeoutError
from redis.asyncio import Redis

from bench.common import bench_servers, percentile, report
from compgrid_events.provisioner import InstanceUsage, UsageTick
from compgrid_events.streams import ALL_STREAMS, USAGE
from compgrid_metering.bootstrap import build
from compgrid_metering.config import Settings
from compgrid_metering.domain.hours import pieces
from compgrid_runtime.logs import configure_logging
from compgrid_runtime.migrations import upgrade
from compgrid_runtime.streams import ensure_streams

SAMPLES = int(os.environ.get("COMPGRID_BENCH_SAMPLES", "100000"))
PER_TICK = 100
INSTANCES = 500
PROJECTS = 10
LAG_S = float(os.environ.get("COMPGRID_BENCH_LAG_S", "10"))
DURABLE = "metering-usage"
US = 1_000_000


def log(message: str) -> None:
    """Progress to stderr (stdout carries only the JSON line)."""
    print(f"[metering] {message}", file=sys.stderr, flush=True)


class Workload:
    """The instances, their projects and budget codes, and ticks of their usage."""

    def __init__(self) -> None:
        self.instances = [uuid.uuid4() for _ in range(INSTANCES)]
        self.projects = [uuid.uuid4() for _ in range(PROJECTS)]
        self.budgets = [uuid.uuid4() for _ in range(PROJECTS)]
        self.start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(
            hours=3
        )
        self.sent: dict[uuid.UUID, int] = dict.fromkeys(self.instances, 0)
        self.cursor = 0

    def owner(self, index: int) -> tuple[uuid.UUID, uuid.UUID]:
        return self.projects[index % PROJECTS], self.budgets[index % PROJECTS]

    def ticks(self, count: int) -> list[UsageTick]:
        """The next ``count`` ticks: each instance's next minute, PER_TICK instances a tick."""
        made: list[UsageTick] = []
        for _ in range(count):
            samples = []
            for _ in range(PER_TICK):
                index = self.cursor % INSTANCES
                minute = self.cursor // INSTANCES
                instance = self.instances[index]
                project, budget = self.owner(index)
                started = self.start + timedelta(minutes=minute % 180)
                samples.append(
                    InstanceUsage(
                        instance_id=instance,
                        project_id=project,
                        budget_code_id=budget,
                        started_at=started,
                        ended_at=started + timedelta(seconds=60),
                        vcpus=2,
                        memory_mib=4096,
                        cpu_time_ns=30_000_000_000,
                    )
                )
                self.sent[instance] += 60 * US
                self.cursor += 1
            made.append(
                UsageTick(
                    datacenter="bench-dc",
                    host=f"h{len(made) % 16}",
                    tick_id=f"bench/{uuid.uuid4()}",
                    samples=tuple(samples),
                )
            )
        return made


async def publish(nc: NatsClient, ticks: list[UsageTick]) -> list[int]:
    """Publish ticks (64 in flight); return their stream sequences."""
    js = nc.jetstream()
    seqs: list[int] = []
    for start in range(0, len(ticks), 64):
        acks = await asyncio.gather(
            *(
                js.publish(t.subject, t.to_json(), headers={"Nats-Msg-Id": str(t.event_id)})
                for t in ticks[start : start + 64]
            )
        )
        seqs += [a.seq for a in acks]
    return seqs


async def raw_pull_loop(nc: NatsClient, expected: int) -> float:
    """Baseline (a): samples/s of fetch + json.loads + ack over the whole stream."""
    js = nc.jetstream()
    sub = await js.pull_subscribe("usage.>", durable="bench-raw", stream=USAGE.name)
    samples = 0
    started = time.perf_counter()
    seen = 0
    while seen < expected:
        try:
            messages = await sub.fetch(256, timeout=2)
        except (TimeoutError, NatsTimeoutError):
            break
        for msg in messages:
            samples += len(json.loads(msg.data)["samples"])
            await msg.ack()
        seen += len(messages)
    elapsed = time.perf_counter() - started
    await sub.unsubscribe()
    await js.delete_consumer(USAGE.name, "bench-raw")
    return samples / elapsed


async def raw_hincrby(redis: Redis, prefix: str, ticks: list[UsageTick]) -> float:
    """Baseline (b): samples/s of pipelined HINCRBY of the same counters (no dedup)."""
    started = time.perf_counter()
    samples = 0
    for start in range(0, len(ticks), 100):
        pipe = redis.pipeline(transaction=False)
        for tick in ticks[start : start + 100]:
            for sample in tick.samples:
                samples += 1
                for piece in pieces(sample):
                    hour = int(piece.hour.timestamp())
                    for key in (
                        f"{prefix}raw:i:{hour}:{piece.instance_id}",
                        f"{prefix}raw:p:{hour}:{piece.project_id}",
                        f"{prefix}raw:b:{hour}:{piece.budget_code_id}",
                    ):
                        pipe.hincrby(key, "running_us", piece.running_us)
                        pipe.hincrby(key, "vcpu_us", piece.vcpu_us)
                        pipe.hincrby(key, "memory_mib_us", piece.memory_mib_us)
                        pipe.hincrby(key, "cpu_ns", piece.cpu_ns)
        await pipe.execute()
    return samples / (time.perf_counter() - started)


async def drained(nc: NatsClient, last_seq: int) -> bool:
    info = await nc.jetstream().consumer_info(USAGE.name, DURABLE)
    return (info.ack_floor.stream_seq or 0) >= last_seq and not info.num_ack_pending


async def main() -> None:
    """Publish, measure the baselines and ours, then the lag; print the JSON line."""
    redis_url = os.environ.get("COMPGRID_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    redis = Redis.from_url(redis_url)
    work = Workload()
    configure_logging("bench", level="WARNING")
    async with bench_servers() as (database_url, nats_url):
        await asyncio.to_thread(upgrade, "compgrid_metering", database_url)
        nc = await nats.connect(nats_url)
        await ensure_streams(nc.jetstream(), ALL_STREAMS)
        ticks = work.ticks(SAMPLES // PER_TICK)
        seqs = await publish(nc, ticks)
        log(f"published {len(ticks)} ticks, {SAMPLES} samples")
        base_rate = await raw_pull_loop(nc, len(ticks))
        log(f"raw pull loop: {base_rate:.0f} samples/s")
        redis_rate = await raw_hincrby(redis, prefix, ticks)
        log(f"raw HINCRBY: {redis_rate:.0f} samples/s")

        settings = Settings(
            database_url=database_url,
            nats_url=nats_url,
            redis_url=redis_url,
            redis_prefix=prefix,
            log_level="WARNING",
        )
        app, deps = build(settings)
        started = time.perf_counter()
        await app.start()
        while not await drained(nc, seqs[-1]):
            await asyncio.sleep(0.01)
        rate = SAMPLES / (time.perf_counter() - started)
        log(f"ours: {rate:.0f} samples/s")

        # Lag at half the rate: ticks published on a schedule, acknowledged when applied.
        per_s = rate / 2 / PER_TICK
        lag_ticks = work.ticks(max(1, int(per_s * LAG_S)))
        published: dict[int, float] = {}
        lags: list[float] = []

        async def produce() -> None:
            begin = time.perf_counter()
            js = nc.jetstream()
            for n, tick in enumerate(lag_ticks):
                delay = begin + n / per_s - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                ack = await js.publish(
                    tick.subject, tick.to_json(), headers={"Nats-Msg-Id": str(tick.event_id)}
                )
                published[ack.seq] = time.perf_counter()

        async def observe() -> None:
            done_to = seqs[-1]
            while len(lags) < len(lag_ticks):
                info = await nc.jetstream().consumer_info(USAGE.name, DURABLE)
                floor = info.ack_floor.stream_seq or 0
                now = time.perf_counter()
                for seq in range(done_to + 1, floor + 1):
                    if seq in published:
                        lags.append(now - published[seq])
                done_to = max(done_to, floor)
                await asyncio.sleep(0.02)

        await asyncio.wait_for(asyncio.gather(produce(), observe()), LAG_S * 6 + 60)
        await app.stop()

        lost = doubled = 0
        for instance, sent_us in work.sent.items():
            counted = (await deps.counters.total("i", instance)).running_us
            if counted < sent_us:
                lost += (sent_us - counted) // (60 * US)
            elif counted > sent_us:
                doubled += (counted - sent_us) // (60 * US)
        await nc.close()
    keys = [k async for k in redis.scan_iter(match=f"{prefix}*", count=5000)]
    for start in range(0, len(keys), 1000):
        await redis.delete(*keys[start : start + 1000])
    await redis.aclose()
    extra: dict[str, Any] = {
        "redis_baseline": round(redis_rate, 1),
        "redis_ratio": round(rate / redis_rate, 3),
        "lag_p99_s": round(percentile(lags, 99), 3),
        "lag_p50_s": round(percentile(lags, 50), 3),
        "lost": lost,
        "double_counted": doubled,
        "samples": SAMPLES,
        "per_tick": PER_TICK,
        "lag_rate_samples_s": round(rate / 2, 1),
    }
    report("metering", rate, "samples/s", base_rate, rate / base_rate, **extra)


if __name__ == "__main__":
    asyncio.run(main())
