"""Rebuilding the counters by replaying the usage stream, after Redis lost its data.

Each tick's claim and increments live together in Redis, so after a loss "claimed" still means
"counted in what Redis holds now". A rebuild replays the USAGE stream from a point in time up
to where it ended when the rebuild began and applies every tick through the same claim: ticks
counted since the loss are skipped, the lost ones are counted again, and ticks the live
consumer applies meanwhile are counted once either way. Claims expire after ``dedup_ttl_s``, so
a rebuild may only start within that window (older counters would be counted twice).
Then the counters are marked complete and the closed hours are rolled up again: an hour whose
totals came back unchanged publishes nothing.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from nats.aio.client import Client as NatsClient
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from compgrid_events import registry
from compgrid_events.base import utc_now
from compgrid_events.provisioner import UsageTick
from compgrid_events.streams import USAGE
from compgrid_metering.use_cases.deps import Deps
from compgrid_metering.use_cases.ingest import tick_of
from compgrid_metering.use_cases.rollups import close_hours
from compgrid_runtime.errors import Invalid
from compgrid_runtime.logs import get_logger

log = get_logger(__name__)

MARGIN = timedelta(hours=1)
"""How much further back than ``since`` the replay starts: a tick sent just after ``since``
may hold an interval that began before it."""


async def rebuild(deps: Deps, nc: NatsClient, since: datetime, batch: int = 512) -> int:
    """Replay the usage stream from ``since``; return how many ticks were counted again."""
    oldest = utc_now() - timedelta(seconds=deps.settings.dedup_ttl_s) + MARGIN
    if since < oldest:
        raise Invalid(
            f"can rebuild from {oldest.isoformat()} on: older ticks' claims have expired and "
            "they would be counted twice",
            field="since",
        )
    js = nc.jetstream()
    end = (await js.stream_info(USAGE.name)).state.last_seq
    start = since - MARGIN
    sub = await js.pull_subscribe(
        "usage.>",
        stream=USAGE.name,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=start,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=60.0,
        ),
    )
    counted = seen = last = 0
    try:
        while last < end:
            try:
                messages = await sub.fetch(batch, timeout=2)
            except (TimeoutError, NatsTimeoutError):
                # a slow answer is not the end: only the consumer knows whether more is left
                if (await sub.consumer_info()).num_pending == 0:
                    break
                continue
            ticks = []
            for msg in messages:
                last = msg.metadata.sequence.stream
                if last > end:
                    break
                try:
                    event = registry.decode(msg.subject, msg.data)
                except ValueError:
                    continue  # the live consumer dead-lettered it
                if isinstance(event, UsageTick):
                    ticks.append(tick_of(event, deps.settings.idle_cpu_percent))
            if ticks:
                applied = await deps.counters.apply(ticks, now_ms=int(time.time() * 1000))
                counted += sum(applied)
                seen += len(ticks)
    finally:
        await sub.unsubscribe()
    await deps.counters.mark_intact()
    log.info("counters rebuilt", since=since.isoformat(), ticks=seen, counted_again=counted)
    await close_hours(deps)
    return counted
