"""Usage ticks into the Redis counters, each exactly once."""

from __future__ import annotations

import time

from compgrid_events.provisioner import InstanceUsage, UsageTick
from compgrid_metering.adapters.counters import Activity, Tick
from compgrid_metering.domain.hours import micros, pieces
from compgrid_metering.use_cases.deps import Deps
from compgrid_runtime.logs import get_logger

log = get_logger(__name__)


def activity(sample: InstanceUsage, idle_below_percent: float) -> Activity | None:
    """How busy the sample says the instance was (None for an empty interval)."""
    span_us = micros(sample.ended_at - sample.started_at)
    if span_us <= 0:
        return None
    capacity_ns = span_us * 1000 * sample.vcpus
    return Activity(
        instance_id=sample.instance_id,
        project_id=sample.project_id,
        idle=sample.cpu_time_ns * 100 < idle_below_percent * capacity_ns,
        started_ms=int(sample.started_at.timestamp() * 1000),
        ended_ms=int(sample.ended_at.timestamp() * 1000),
        cpu_ns=sample.cpu_time_ns,
        capacity_ns=capacity_ns,
    )


def tick_of(event: UsageTick, idle_below_percent: float) -> Tick:
    """What a usage tick adds to the counters."""
    marks = [activity(s, idle_below_percent) for s in event.samples]
    return Tick(
        event.tick_id,
        [piece for sample in event.samples for piece in pieces(sample)],
        [m for m in marks if m is not None],
    )


async def on_usage_ticks(deps: Deps, events: list[UsageTick]) -> None:
    """Count every sample of a batch of ticks in one round trip, but no tick twice."""
    ticks = [tick_of(event, deps.settings.idle_cpu_percent) for event in events]
    applied = await deps.counters.apply(ticks, now_ms=int(time.time() * 1000))
    for event, fresh in zip(events, applied, strict=True):
        if not fresh:
            log.info("tick counted before", tick=event.tick_id, host=event.host)
