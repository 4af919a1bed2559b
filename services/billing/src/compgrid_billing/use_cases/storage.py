"""Storage of stopped instances: a disk costs money while it exists, running or not.

Hours in which an instance ran reach billing from metering (and their storage is priced for
the seconds the disk existed, see ``rating``). An hour in which it was stopped throughout has
no usage from metering, so once it is closed (``storage_accrual_after_s`` after it ended) it
gets a usage row of its own — revision 0, nothing but the disk — which is rated like any other.
Metering's row for the same hour, should one come late, replaces it (a higher revision) and the
hour is re-rated: the difference is an adjustment, nothing is charged twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import text

from compgrid_billing.adapters.locks import lock_ledger
from compgrid_billing.use_cases import budgets, rating
from compgrid_billing.use_cases.deps import Deps
from compgrid_events.base import utc_now

_ACCRUE = """
WITH due AS (
  SELECT i.id, i.project_id, i.budget_code_id,
         date_trunc('hour', coalesce(i.storage_accrued_until, i.disk_since)) AS first_hour,
         least(:closed, coalesce(
           date_trunc('hour', i.disk_until - interval '1 microsecond') + interval '1 hour',
           :closed)) AS end_hour
  FROM billing.instance i
  WHERE i.disk_since IS NOT NULL
    AND coalesce(i.storage_accrued_until, i.disk_since) < least(
      :closed, coalesce(i.disk_until, :closed))
),
added AS (
  INSERT INTO billing.usage (instance_id, hour_start, project_id, budget_code_id, revision,
    running_s, vcpu_s, memory_gib_s, storage_gib_s, gpu_s)
  SELECT d.id, h, d.project_id, d.budget_code_id, 0, 0, 0, 0, 0, '{}'::jsonb
  FROM due d, generate_series(d.first_hour, d.end_hour - interval '1 hour', interval '1 hour') h
  ON CONFLICT DO NOTHING
  RETURNING instance_id, hour_start
),
moved AS (
  UPDATE billing.instance i SET storage_accrued_until = d.end_hour
  FROM due d WHERE i.id = d.id AND d.end_hour > d.first_hour
)
SELECT instance_id, hour_start FROM added
"""


async def accrue(deps: Deps, now: datetime | None = None) -> int:
    """Give each closed hour a stopped disk existed in its usage row, rate them and recompute
    their budget codes; return how many hours were added."""
    now = now or utc_now()
    closed = (now - timedelta(seconds=deps.settings.storage_accrual_after_s)).replace(
        minute=0, second=0, microsecond=0
    )
    async with deps.uow() as uow:
        await lock_ledger(uow)
        added = [
            (row.instance_id, row.hour_start)
            for row in await uow.session.execute(text(_ACCRUE), {"closed": closed})
        ]
        rated = await rating.rate_hours(uow, added)
        await budgets.refresh(uow, deps.settings, rated.budget_codes)
        await uow.commit()
    return len(added)
