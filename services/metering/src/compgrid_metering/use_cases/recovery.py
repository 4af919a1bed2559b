"""Noticing that Redis lost the counters, and rebuilding them without being asked.

The counters carry a marker, ``P:intact``, that only a new deployment or a finished rebuild
writes, so a loss of Redis's data takes it away; Postgres remembers every key prefix whose
counters were started (``counter_set``), so a missing marker of a known prefix is a loss, not a
new deployment. While the marker is missing, usage answers say ``complete: false`` and hours do
not close. Every round (``rollup_interval_s``) of every metering process looks for it; one of
them (the rebuild lock) replays the usage stream as far back as the claims and the stream allow,
and the marker is back once every tick the stream held is counted.
"""

from __future__ import annotations

from nats.aio.client import Client as NatsClient

from compgrid_metering.adapters.counter_sets import create_counter_set, get_counter_set
from compgrid_metering.adapters.rebuild_lock import RebuildLock
from compgrid_metering.use_cases.deps import Deps
from compgrid_metering.use_cases.rebuild import rebuild_holding
from compgrid_runtime.errors import DomainError
from compgrid_runtime.logs import get_logger

log = get_logger(__name__)


async def check_intact(deps: Deps) -> None:
    """At start: a key prefix seen for the first time starts with complete counters; a known
    one without its marker lost them (the next round rebuilds them)."""
    prefix = deps.settings.redis_prefix
    async with deps.uow() as uow:
        known = await get_counter_set(uow.session, prefix=prefix)
        if known is None:
            if not await deps.counters.intact():
                await deps.counters.mark_intact()
            await create_counter_set(uow.session, prefix=prefix)
            await uow.commit()
            return
    if not await deps.counters.intact():
        log.error("Redis has lost the usage counters: rebuilding them from the usage stream")


async def recover(deps: Deps, nc: NatsClient) -> bool:
    """Rebuild the counters if Redis lost them and no other process is at it; True if done."""
    if await deps.counters.intact():
        return False
    lock = RebuildLock(deps.counters)
    if not await lock.acquire():
        return False  # another process is rebuilding
    if await deps.counters.intact():  # another process finished a rebuild just now
        await lock.release()
        return False
    log.warning("Redis has lost the usage counters: rebuilding them from the usage stream")
    try:
        await rebuild_holding(deps, nc, lock)
    except DomainError as exc:
        log.warning("rebuild did not finish; the next round tries again", reason=exc.message)
        return False
    return True
