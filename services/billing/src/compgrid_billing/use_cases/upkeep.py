"""The billing service's periodic round: charge stopped disks, price parked usage, keep budget
codes current."""

from __future__ import annotations

import asyncio

from compgrid_billing.use_cases import budgets, rating, storage
from compgrid_billing.use_cases.deps import Deps
from compgrid_runtime.logs import get_logger

log = get_logger(__name__)


async def upkeep_forever(deps: Deps) -> None:
    """Every ``rating_interval_s``: charge stopped disks, price what waited, and say what still
    waits; every ``budget_refresh_s``: recompute every budget code."""
    loop = asyncio.get_running_loop()
    refreshed = loop.time()
    while True:
        try:
            added = await storage.accrue(deps)
            if added:
                log.info("stopped disks charged", hours=added)
            if loop.time() - refreshed >= deps.settings.budget_refresh_s:
                refreshed = loop.time()
                await budgets.refresh_all(deps)
            async with deps.uow() as uow:
                rated = await rating.rate_parked(uow)
                await budgets.refresh(uow, deps.settings, rated.budget_codes)
                waiting = await rating.parked(uow, limit=1)
                await uow.commit()
            if rated.total:
                log.info("parked usage rated", entries=rated.total)
            if waiting:
                log.warning(
                    "usage parked: it cannot be priced yet (see parked.list)",
                    oldest_instance=str(waiting[0].instance_id),
                    reason=rating.REASONS[waiting[0].reason],
                )
        except Exception as exc:  # tried again next time
            log.warning("upkeep round failed", error=repr(exc))
        await asyncio.sleep(deps.settings.rating_interval_s)
