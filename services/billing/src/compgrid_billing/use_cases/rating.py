"""Rating: each instance-hour's usage priced with the rates in effect at that hour, into the
ledger.

Rating is one SQL statement over a scope of usage rows (the rows a batch just stored, every
hour of a tier from a corrected date on, or everything not rated yet). For each instance-hour
it computes what the usage costs now and compares it with the sum of the ledger entries the
hour already has: nothing is written when they agree (rating is idempotent), the whole
charge is written when the hour has no entry, and the difference is written as an
``adjustment`` when a corrected rollup or a price correction changed it. The ledger is never
updated in place. What the entries add is added to the instance's and the budget code's
running ``charged`` in the same statement.

Storage is charged for every second the instance's disk exists in the hour — from its first
start until its deletion, running or stopped (hours stopped throughout get a usage row of their
own from ``storage.accrue``); before billing knows the disk's life, for the seconds it ran.

Usage that cannot be priced is parked (listed in ``billing.parked``), not lost, until what it
lacks arrives:
the instance (its ``InstanceRequested``), its budget code, rates of its tier at that hour, a
budget code valid on that day, a rate for each of its GPU models, or a tier in the budget
code's currency. :func:`parked` says which, and :func:`rate_parked` retries them.

Every rating transaction holds the ledger lock (``adapters.locks``), as invoicing does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import text

from compgrid_billing.adapters.locks import lock_ledger
from compgrid_billing.domain.money import HOURS_PER_MONTH
from compgrid_runtime.logs import get_logger
from compgrid_runtime.uow import UnitOfWork

log = get_logger(__name__)

WORK_MEM = "256MB"


_TARGET = f"""
rates AS (
  SELECT tier_id, effective_from, currency, vcpu_hour, memory_gib_hour, storage_gib_month,
         gpu_hour,
         lead(effective_from, 1, 'infinity'::timestamptz)
           OVER (PARTITION BY tier_id ORDER BY effective_from) AS effective_to
  FROM billing.price_rate
),
scoped AS (
  SELECT u.*, i.price_tier_id, i.disk_gib, i.disk_since, i.disk_until
  FROM billing.usage u LEFT JOIN billing.instance i ON i.id = u.instance_id
  WHERE {{scope}}
),
priced AS (
  SELECT s.instance_id, s.hour_start, s.project_id, s.budget_code_id, s.revision,
         s.price_tier_id AS tier_id, r.effective_from AS rate_from, r.currency,
         s.vcpu_s, s.memory_gib_s, s.gpu_s, r.vcpu_hour, r.memory_gib_hour,
         r.storage_gib_month, r.gpu_hour,
         CASE WHEN s.storage_gib_s > 0 THEN s.storage_gib_s
              WHEN s.disk_since IS NOT NULL THEN s.disk_gib * greatest(0, extract(epoch FROM
                least(s.hour_start + interval '1 hour', coalesce(s.disk_until, 'infinity'))
                - greatest(s.hour_start, s.disk_since)))
              ELSE s.disk_gib * s.running_s END AS storage_gib_s
  FROM scoped s
  JOIN billing.budget b ON b.id = s.budget_code_id
   AND (s.hour_start AT TIME ZONE 'UTC')::date BETWEEN b.valid_from AND b.valid_to
  JOIN rates r ON r.tier_id = s.price_tier_id AND r.currency = b.currency
   AND s.hour_start >= r.effective_from AND s.hour_start < r.effective_to
  WHERE s.gpu_s = '{{{{}}}}'::jsonb OR NOT EXISTS (
    SELECT 1 FROM jsonb_object_keys(s.gpu_s) model WHERE NOT r.gpu_hour ? model)
),
target AS (
  SELECT instance_id, hour_start, project_id, budget_code_id, revision, tier_id, rate_from,
         currency, vcpu_s, memory_gib_s, storage_gib_s,
         CASE WHEN gpu_s = '{{{{}}}}'::jsonb THEN gpu_s
              ELSE billing.map_div(gpu_s, 1) END AS gpu_s,
         vcpu_s * vcpu_hour * {HOURS_PER_MONTH} AS vcpu_scaled,
         memory_gib_s * memory_gib_hour * {HOURS_PER_MONTH} AS memory_scaled,
         storage_gib_s * storage_gib_month AS storage_scaled,
         CASE WHEN gpu_s = '{{{{}}}}'::jsonb THEN gpu_s
              ELSE billing.map_mul(gpu_s, gpu_hour, {HOURS_PER_MONTH}) END AS gpu_scaled
  FROM priced
)"""

_RATE = f"""
WITH {_TARGET},
existing AS (
  SELECT c.instance_id, c.hour_start,
         sum(c.vcpu_s) AS vcpu_s, sum(c.memory_gib_s) AS memory_gib_s,
         sum(c.storage_gib_s) AS storage_gib_s, billing.map_sum(c.gpu_s) AS gpu_s,
         sum(c.vcpu_scaled) AS vcpu_scaled, sum(c.memory_scaled) AS memory_scaled,
         sum(c.storage_scaled) AS storage_scaled, billing.map_sum(c.gpu_scaled) AS gpu_scaled
  FROM billing.charge c JOIN target t USING (instance_id, hour_start)
  GROUP BY c.instance_id, c.hour_start
),
entries AS (
  SELECT t.instance_id, t.hour_start, t.project_id, t.budget_code_id,
         CASE WHEN e.instance_id IS NULL THEN 'usage' ELSE 'adjustment' END AS kind,
         t.revision, t.tier_id, t.rate_from, t.currency,
         t.vcpu_s - coalesce(e.vcpu_s, 0) AS vcpu_s,
         t.memory_gib_s - coalesce(e.memory_gib_s, 0) AS memory_gib_s,
         t.storage_gib_s - coalesce(e.storage_gib_s, 0) AS storage_gib_s,
         CASE WHEN e.instance_id IS NULL THEN t.gpu_s
              ELSE billing.map_add(t.gpu_s, billing.map_div(e.gpu_s, -1)) END AS gpu_s,
         t.vcpu_scaled - coalesce(e.vcpu_scaled, 0) AS vcpu_scaled,
         t.memory_scaled - coalesce(e.memory_scaled, 0) AS memory_scaled,
         t.storage_scaled - coalesce(e.storage_scaled, 0) AS storage_scaled,
         CASE WHEN e.instance_id IS NULL THEN t.gpu_scaled
              ELSE billing.map_add(t.gpu_scaled, billing.map_div(e.gpu_scaled, -1)) END
           AS gpu_scaled
  FROM target t LEFT JOIN existing e USING (instance_id, hour_start)
  WHERE e.instance_id IS NULL
     OR t.vcpu_s <> e.vcpu_s OR t.memory_gib_s <> e.memory_gib_s
     OR t.storage_gib_s <> e.storage_gib_s OR t.gpu_s <> e.gpu_s
     OR t.vcpu_scaled <> e.vcpu_scaled OR t.memory_scaled <> e.memory_scaled
     OR t.storage_scaled <> e.storage_scaled OR t.gpu_scaled <> e.gpu_scaled
),
parked_now AS (
  INSERT INTO billing.parked (instance_id, hour_start)
  SELECT s.instance_id, s.hour_start FROM scoped s
  WHERE NOT EXISTS (
    SELECT 1 FROM target t WHERE t.instance_id = s.instance_id AND t.hour_start = s.hour_start)
  ON CONFLICT DO NOTHING
),
unparked AS (
  DELETE FROM billing.parked p USING target t
  WHERE p.instance_id = t.instance_id AND p.hour_start = t.hour_start
),
applied AS (
  INSERT INTO billing.charge (
    instance_id, hour_start, project_id, budget_code_id, kind, usage_revision, tier_id,
    rate_from, currency, vcpu_s, memory_gib_s, storage_gib_s, gpu_s,
    vcpu_scaled, memory_scaled, storage_scaled, gpu_scaled, total_scaled)
  SELECT instance_id, hour_start, project_id, budget_code_id, kind, revision, tier_id,
         rate_from, currency, vcpu_s, memory_gib_s, storage_gib_s, gpu_s,
         vcpu_scaled, memory_scaled, storage_scaled, gpu_scaled,
         vcpu_scaled + memory_scaled + storage_scaled
           + CASE WHEN gpu_scaled = '{{{{}}}}'::jsonb THEN 0
                  ELSE billing.map_total(gpu_scaled) END
  FROM entries
  RETURNING instance_id, budget_code_id, total_scaled
),
per_instance AS (
  UPDATE billing.instance i SET charged_scaled = i.charged_scaled + a.total
  FROM (SELECT instance_id, sum(total_scaled) AS total FROM applied GROUP BY instance_id) a
  WHERE i.id = a.instance_id
)
UPDATE billing.budget b SET charged_scaled = b.charged_scaled + a.total
FROM (SELECT budget_code_id, sum(total_scaled) AS total, count(*) AS entries
      FROM applied GROUP BY budget_code_id) a
WHERE b.id = a.budget_code_id
RETURNING b.id, a.entries
"""

PARKED = (
    "EXISTS (SELECT 1 FROM billing.parked p WHERE p.instance_id = u.instance_id "
    "AND p.hour_start = u.hour_start)"
)
"""Usage that could not be priced when it came (``billing.parked`` lists it)."""


@dataclass(frozen=True)
class Rated:
    """What one rating pass wrote: entries per budget code it touched."""

    entries: dict[UUID, int]

    @property
    def budget_codes(self) -> list[UUID]:
        """The budget codes whose charges changed."""
        return sorted(self.entries)

    @property
    def total(self) -> int:
        """How many ledger entries were written."""
        return sum(self.entries.values())


async def for_large_statements(uow: UnitOfWork) -> None:
    """Settings for the rest of the transaction's statements over many ledger rows."""
    # what a statement holds for its several steps stays in memory, not in temp files
    await uow.session.execute(text(f"SET LOCAL work_mem = '{WORK_MEM}'"))
    # compiling such statements (JIT) takes seconds and saves less than that
    await uow.session.execute(text("SET LOCAL jit = off"))


async def _rate(uow: UnitOfWork, scope: str, params: dict[str, Any]) -> Rated:
    await lock_ledger(uow)
    await for_large_statements(uow)
    rows = await uow.session.execute(text(_RATE.format(scope=scope)), params)
    return Rated({row.id: int(row.entries) for row in rows})


async def rate_hours(uow: UnitOfWork, keys: Sequence[tuple[UUID, datetime]]) -> Rated:
    """Rate these instance-hours (usage just stored)."""
    if not keys:
        return Rated({})
    return await _rate(
        uow,
        "(u.instance_id, u.hour_start) IN "
        "(SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:hours AS timestamptz[])))",
        {"ids": [k[0] for k in keys], "hours": [k[1] for k in keys]},
    )


async def rate_tier_since(uow: UnitOfWork, tier_id: UUID, since: datetime) -> Rated:
    """Re-rate every hour of a tier's instances from ``since`` on (new or corrected rates)."""
    return await _rate(
        uow, "i.price_tier_id = :tier AND u.hour_start >= :since", {"tier": tier_id, "since": since}
    )


async def rate_instance(uow: UnitOfWork, instance_id: UUID) -> Rated:
    """Rate every hour of one instance (it became known, or its disk's life did)."""
    return await _rate(uow, "u.instance_id = :i", {"i": instance_id})


async def rate_budget(uow: UnitOfWork, budget_code_id: UUID) -> Rated:
    """Rate a budget code's parked usage (the code arrived, or its dates changed)."""
    return await _rate(uow, f"u.budget_code_id = :b AND {PARKED}", {"b": budget_code_id})


async def rate_parked(uow: UnitOfWork) -> Rated:
    """Rate every parked instance-hour that can be priced now."""
    return await _rate(uow, PARKED, {})


BULK_ENTRIES = 100_000
"""A rating that wrote this many entries refreshes the ledger's planner statistics."""


async def rate_all(uow: UnitOfWork) -> Rated:
    """Rate every instance-hour there is (after a restore, or stored in bulk): what agrees
    with the ledger writes nothing. Many new entries refresh the planner's statistics of the
    ledger at once, so invoicing right after does not plan for an empty table."""
    rated = await _rate(uow, "TRUE", {})
    if rated.total >= BULK_ENTRIES:
        await uow.session.execute(text("ANALYZE billing.charge"))
    return rated


_PARKED = """
SELECT u.instance_id, u.hour_start, u.project_id, u.budget_code_id, u.revision, u.received_at,
  CASE
    WHEN i.id IS NULL THEN 'unknown_instance'
    WHEN b.id IS NULL THEN 'unknown_budget_code'
    WHEN (u.hour_start AT TIME ZONE 'UTC')::date NOT BETWEEN b.valid_from AND b.valid_to
      THEN 'budget_code_not_valid'
    WHEN i.price_tier_id IS NULL OR NOT EXISTS (
      SELECT 1 FROM billing.price_rate r WHERE r.tier_id = i.price_tier_id
      AND r.effective_from <= u.hour_start) THEN 'no_rates'
    WHEN NOT EXISTS (SELECT 1 FROM billing.price_rate r WHERE r.tier_id = i.price_tier_id
      AND r.currency = b.currency) THEN 'currency_mismatch'
    ELSE 'no_gpu_rate'
  END AS reason
FROM billing.parked p
JOIN billing.usage u ON u.instance_id = p.instance_id AND u.hour_start = p.hour_start
LEFT JOIN billing.instance i ON i.id = u.instance_id
LEFT JOIN billing.budget b ON b.id = u.budget_code_id
ORDER BY p.parked_at, u.instance_id, u.hour_start
LIMIT :limit
"""

REASONS = {
    "unknown_instance": "the instance is not known to billing (no InstanceRequested yet)",
    "unknown_budget_code": "the budget code is not known to billing yet",
    "budget_code_not_valid": "the budget code was not valid on that day",
    "no_rates": "the instance's price tier had no rates in effect at that hour",
    "currency_mismatch": "the price tier's currency is not the budget code's",
    "no_gpu_rate": "the price tier has no rate for one of the instance's GPU models",
}


async def parked(uow: UnitOfWork, limit: int = 1000) -> list[Any]:
    """Usage waiting to be rated, oldest first, each with why."""
    return list(await uow.session.execute(text(_PARKED), {"limit": limit}))
