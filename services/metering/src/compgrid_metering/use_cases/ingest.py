"""Usage ticks into the Redis counters, each exactly once."""

from __future__ import annotations

import time

from compgrid_events.provisioner import UsageTick
from compgrid_metering.domain.hours import pieces
from compgrid_metering.use_cases.deps import Deps
from compgrid_runtime.logs import get_logger

log = get_logger(__name__)


async def on_usage_tick(deps: Deps, event: UsageTick) -> None:
    """Count every sample of the tick, unless this tick was counted before."""
    found = [piece for sample in event.samples for piece in pieces(sample)]
    [applied] = await deps.counters.apply([(event.tick_id, found)], now_ms=int(time.time() * 1000))
    if not applied:
        log.info("tick counted before", tick=event.tick_id, host=event.host)
