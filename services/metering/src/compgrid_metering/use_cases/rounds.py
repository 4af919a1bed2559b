"""The background round of every metering process, every ``rollup_interval_s``: rebuild the
counters if Redis lost them, close the hours that are due, report idle instances."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NatsClient

from compgrid_metering.use_cases.deps import Deps
from compgrid_metering.use_cases.recovery import recover
from compgrid_metering.use_cases.rollups import close_hours, report_idle
from compgrid_runtime.logs import get_logger

log = get_logger(__name__)


async def roll_up_forever(deps: Deps, nc: NatsClient) -> None:
    """Run a round every ``rollup_interval_s`` until cancelled."""
    while True:
        try:
            await recover(deps, nc)
            written = await close_hours(deps)
            if written:
                log.info("hours rolled up", rows=written)
            await report_idle(deps)
        except Exception as exc:  # a round that failed is tried again next time
            log.warning("rollup round failed", error=repr(exc))
        await asyncio.sleep(deps.settings.rollup_interval_s)
