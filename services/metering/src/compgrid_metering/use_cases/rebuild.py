"""Rebuilding the counters by replaying the usage stream, after Redis lost its data.

Each tick's claim and increments live together in Redis, so after a loss "claimed" still means
"counted in what Redis holds now". A rebuild replays the USAGE stream from an hour before
``since`` up to where it ended when the rebuild began and applies every tick through the same
claim: ticks counted since the loss are skipped, the lost ones are counted again, and ticks the
live consumer applies meanwhile are counted once either way. Only the hours from ``since``'s on
are counted: every tick with usage in them was published after they began, so they come back
whole, while an earlier hour would come back with only some of its ticks and be published as a
false correction. ``since`` may not be older than the claims (``dedup_ttl_s``: older counters
would be counted twice) nor than what the stream still holds (the rest is gone); without one,
the rebuild goes as far back as both allow. One process at a time rebuilds (``RebuildLock``);
then the counters are marked complete and the closed hours are rolled up again: an hour whose
totals came back unchanged publishes nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from nats.aio.client import Client as NatsClient
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from compgrid_events import registry
from compgrid_events.base import utc_now
from compgrid_events.provisioner import UsageTick
from compgrid_events.streams import USAGE
from compgrid_metering.adapters.counter_sets import update_counter_set_rebuilt
from compgrid_metering.adapters.counters import Tick
from compgrid_metering.adapters.rebuild_lock import RebuildLock
from compgrid_metering.domain.hours import hour_of
from compgrid_metering.use_cases.deps import Deps
from compgrid_metering.use_cases.ingest import tick_of
from compgrid_metering.use_cases.rollups import close_hours
from compgrid_runtime.errors import Conflict, Invalid
from compgrid_runtime.logs import get_logger

log = get_logger(__name__)

MARGIN = timedelta(hours=1)
"""How much further back than ``since`` the replay starts: a tick sent just after ``since``
may hold an interval that began before it."""


@dataclass(frozen=True)
class Window:
    """The oldest ``since`` a rebuild may start from now, and what sets it."""

    earliest: datetime
    reason: str


async def replay_window(deps: Deps, js: JetStreamContext) -> Window:
    """How far back a rebuild may go: the claims' lifetime, or what the stream still holds."""
    ttl = deps.settings.dedup_ttl_s
    window = Window(
        utc_now() - timedelta(seconds=ttl) + MARGIN,
        f"ticks older than dedup_ttl_s ({ttl} s) lost their claims and would be counted twice",
    )
    state = (await js.stream_info(USAGE.name)).state
    if state.first_seq <= 1:
        return window  # the stream still holds every tick it was ever sent
    first = (
        (await js.get_msg(USAGE.name, seq=state.first_seq)).time if state.messages else None
    ) or utc_now()
    if first + MARGIN <= window.earliest:
        return window
    return Window(
        first + MARGIN, f"the usage stream holds ticks published from {first.isoformat()} on"
    )


def _from_hour(tick: Tick, floor: datetime) -> Tick:
    """A tick's usage in the hours from ``floor`` on."""
    return Tick(tick.tick_id, [p for p in tick.pieces if p.hour >= floor], tick.activity)


async def _replay(
    deps: Deps, js: JetStreamContext, since: datetime, lock: RebuildLock, batch: int
) -> tuple[int, int]:
    """Apply the stream's ticks from ``since`` to where it ends now; return how many ticks were
    read and how many of them were counted again."""
    end = (await js.stream_info(USAGE.name)).state.last_seq
    sub = await js.pull_subscribe(
        "usage.>",
        stream=USAGE.name,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=since - MARGIN,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=60.0,
        ),
    )
    floor = hour_of(since)
    seen = counted = last = 0
    try:
        while last < end:
            if not await lock.renew():
                raise Conflict("the rebuild lost its hold: Redis lost its data again meanwhile")
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
                    ticks.append(_from_hour(tick_of(event, deps.settings.idle_cpu_percent), floor))
            if ticks:
                applied = await deps.counters.apply(ticks, now_ms=int(time.time() * 1000))
                counted += sum(applied)
                seen += len(ticks)
    finally:
        await sub.unsubscribe()
    return seen, counted


async def checked_since(deps: Deps, js: JetStreamContext, since: datetime | None) -> datetime:
    """``since``, or the oldest allowed when None; Invalid when it is older than allowed."""
    window = await replay_window(deps, js)
    if since is None:
        return window.earliest
    if since < window.earliest:
        raise Invalid(
            f"cannot rebuild from {since.isoformat()}: {window.reason}; rebuild from "
            f"{window.earliest.isoformat()} or later",
            field="since",
        )
    return since


async def rebuild_holding(
    deps: Deps, nc: NatsClient, lock: RebuildLock, since: datetime | None = None
) -> int:
    """Replay the usage stream from ``since`` (by default as far back as allowed) while holding
    the rebuild lock; return how many ticks were counted again. The lock is let go either way."""
    try:
        js = nc.jetstream()
        since = await checked_since(deps, js, since)
        # batches as large as the live consumer's: one script call holds Redis as long
        seen, counted = await _replay(deps, js, since, lock, deps.settings.usage_batch_size)
        if not await lock.finish():
            raise Conflict("the rebuild lost its hold: Redis lost its data again meanwhile")
    except BaseException:
        await lock.release()
        raise
    async with deps.uow() as uow:
        await update_counter_set_rebuilt(uow.session, prefix=deps.settings.redis_prefix)
        await uow.commit()
    log.info("counters rebuilt", since=since.isoformat(), ticks=seen, counted_again=counted)
    await close_hours(deps)
    return counted


async def rebuild(deps: Deps, nc: NatsClient, since: datetime | None = None) -> int:
    """Replay the usage stream into the counters; Invalid for a ``since`` older than allowed,
    Conflict while another rebuild runs."""
    await checked_since(deps, nc.jetstream(), since)  # a refusal to act on comes first
    lock = RebuildLock(deps.counters)
    if not await lock.acquire():
        raise Conflict("another metering process is rebuilding the counters now")
    return await rebuild_holding(deps, nc, lock, since)
