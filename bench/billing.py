"""Hourly usage rated and invoiced, against a raw SQL baseline.

Setup (not timed), one process on fresh servers (``bench_servers``): the billing schema with
``PROJECTS`` projects (default 3,000), each with a PI, one budget code and two instances (one in
ten with an A100), three price tiers — one of which changes its rates in the middle of the
month — and ``ROWS`` hourly usage rows (default 1,000,000) of October 2026 in ``billing.usage``,
as billing's consumer stores metering's ``UsageRecorded`` rollups (partial hours included).

Ours (timed): what the billing service does with them — one rating pass pricing every
instance-hour at the rates in effect at that hour into the ledger (with each instance's and
budget code's running total), the budget codes recomputed (status, forecast, thresholds, events
to the outbox), and the billing run for October: one invoice per project and budget code with
lines per instance and resource, numbered, ``InvoiceIssued`` in the outbox and each invoice's
email delivery queued.

Baseline (same run, same rows): one SQL ``GROUP BY`` of the usage per project and budget code,
priced with the tiers' rates, plus one batched insert of the resulting invoices (number,
project, budget code, total) into a table of the same shape — no ledger, no lines, no
effective dates.

Check: every invoice total is compared with an independent calculation in Python from the raw
usage (seconds summed per instance, resource and rate period by the database, then priced,
rounded half-up per line and summed); ``mismatches`` counts the invoices that differ (must be
0), and every project must have exactly one invoice.

Fields: ``value`` our seconds; ``baseline`` raw seconds; ``ratio`` = baseline ÷ value (target
≥ 0.2); ``invoices``; ``mismatches``; ``rows``; ``ledger_entries``; ``rating_s``; ``budgets_s``;
``invoicing_s``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import asyncpg

from bench.common import bench_servers, report
from compgrid_billing.bootstrap import build
from compgrid_billing.config import Settings
from compgrid_billing.use_cases import budgets, invoicing, rating
from compgrid_runtime.logs import configure_logging
from compgrid_runtime.mail import Mail
from compgrid_runtime.migrations import upgrade

PROJECTS = int(os.environ.get("COMPGRID_BENCH_PROJECTS", "3000"))
ROWS = int(os.environ.get("COMPGRID_BENCH_ROWS", "1000000"))
INSTANCES = 2 * PROJECTS
START = datetime(2026, 10, 1, tzinfo=UTC)
END = datetime(2026, 11, 1, tzinfo=UTC)
CHANGE = datetime(2026, 10, 16, tzinfo=UTC)
CENT = Decimal("0.01")
MONTH_S = Decimal(730 * 3600)

# tier -> (effective_from, vcpu_hour, memory_gib_hour, storage_gib_month, A100 hour)
TIERS: dict[int, list[tuple[datetime, str, str, str, str]]] = {
    0: [(START, "0.0400", "0.0050", "0.10", "2.50")],
    1: [(START, "0.0350", "0.0045", "0.08", "2.20"), (CHANGE, "0.0370", "0.0047", "0.09", "2.30")],
    2: [(START, "0.0525", "0.0061", "0.12", "3.10")],
}  # fmt: skip
TIER_IDS = {n: uuid.UUID(int=n + 1) for n in TIERS}


class NoMail:
    """The bench sends no mail (deliveries stay queued)."""

    async def send(self, mail: Mail) -> None:
        raise RuntimeError("not sent in the benchmark")


async def setup(conn: asyncpg.Connection) -> None:
    """Projects, people, budget codes, tiers, instances and the usage rows (not timed)."""
    for n, rows in TIERS.items():
        for effective_from, vcpu, memory, storage, a100 in rows:
            await conn.execute(
                "INSERT INTO billing.price_rate VALUES ($1, $2, $3, 'EUR', $4, $5, $6,"
                " jsonb_build_object('A100', $7::numeric))",
                TIER_IDS[n], effective_from, f"tier-{n}", Decimal(vcpu), Decimal(memory),
                Decimal(storage), Decimal(a100),
            )  # fmt: skip
    await conn.execute(
        """
        INSERT INTO billing.account
        SELECT md5('pi' || p)::uuid, 'pi' || p || '@uni.example', 'PI ' || p
        FROM generate_series(0, $1 - 1) p;
        """,
        PROJECTS,
    )
    await conn.execute(
        "INSERT INTO billing.project (id, name, pi_user_id) SELECT md5('p' || p)::uuid,"
        " 'Project ' || p, md5('pi' || p)::uuid FROM generate_series(0, $1 - 1) p",
        PROJECTS,
    )
    await conn.execute(
        """
        INSERT INTO billing.budget (id, project_id, code, name, currency, funding, valid_from,
          valid_to, thresholds, hard_limit_behaviour, status, auth_version)
        SELECT md5('b' || p)::uuid, md5('p' || p)::uuid, 'GR-' || p, 'Grant ' || p, 'EUR',
               5000, '2026-01-01', '2027-12-31', '[50, 80, 100]'::jsonb, 'stop_instances',
               'active', 1
        FROM generate_series(0, $1 - 1) p
        """,
        PROJECTS,
    )
    await conn.execute(
        """
        INSERT INTO billing.instance (id, project_id, budget_code_id, name, instance_type,
          price_tier_id, disk_gib, hourly_price, currency, state, version)
        SELECT md5('i' || i)::uuid, md5('p' || (i / 2))::uuid, md5('b' || (i / 2))::uuid,
               'vm-' || i, 'standard', ('00000000-0000-0000-0000-00000000000' || (1 + i % 3))::uuid,
               20 + 10 * (i % 5), 0.5, 'EUR', 'running', 5
        FROM generate_series(0, $1 - 1) i
        """,
        INSTANCES,
    )
    per_instance = ROWS // INSTANCES
    extra = ROWS - per_instance * INSTANCES
    # instance i runs hours [offset, offset + n) of the month; every 7th hour is partial.
    await conn.execute(
        """
        INSERT INTO billing.usage (instance_id, hour_start, project_id, budget_code_id, revision,
          running_s, vcpu_s, memory_gib_s, storage_gib_s, gpu_s)
        SELECT md5('i' || i)::uuid, $2::timestamptz + make_interval(hours => (i % 37) + h),
               md5('p' || (i / 2))::uuid, md5('b' || (i / 2))::uuid, 1,
               s, s * (1 + i % 8), s * (2 + i % 16), 0,
               CASE WHEN i % 10 = 0 THEN jsonb_build_object('A100', s) ELSE '{}'::jsonb END
        FROM generate_series(0, $1 - 1) i,
             LATERAL generate_series(0, $3 - 1 + CASE WHEN i < $4 THEN 1 ELSE 0 END) h,
             LATERAL (SELECT CASE WHEN h % 7 = 3 THEN 1800 + (i % 1000) ELSE 3600 END AS s) x
        """,
        INSTANCES, START, per_instance, extra,
    )  # fmt: skip
    await conn.execute("ANALYZE billing.usage")
    await conn.execute("ANALYZE billing.instance")
    await conn.execute("ANALYZE billing.budget")


async def ours(deps: Any) -> dict[str, float]:
    """Rate every row, recompute the budget codes, invoice the month; times per stage."""
    started = time.perf_counter()
    async with deps.uow() as uow:
        await rating.rate_all(uow)
        await uow.commit()
    rated_at = time.perf_counter()
    await budgets.refresh_all(deps, now=END)
    refreshed_at = time.perf_counter()
    await invoicing.run_period(deps, START, END, "benchmark")
    done = time.perf_counter()
    return {
        "total": done - started,
        "rating": rated_at - started,
        "budgets": refreshed_at - rated_at,
        "invoicing": done - refreshed_at,
    }


BASELINE = """
SELECT u.project_id, u.budget_code_id,
       sum(u.vcpu_s * r.vcpu_hour / 3600 + u.memory_gib_s * r.memory_gib_hour / 3600
           + u.running_s * i.disk_gib * r.storage_gib_month / 2628000
           + coalesce((u.gpu_s ->> 'A100')::numeric, 0) * (r.gpu_hour ->> 'A100')::numeric / 3600)
FROM billing.usage u
JOIN billing.instance i ON i.id = u.instance_id
JOIN billing.price_rate r ON r.tier_id = i.price_tier_id AND r.effective_from = $1
GROUP BY u.project_id, u.budget_code_id
"""


async def baseline(conn: asyncpg.Connection) -> float:
    """One GROUP BY over the usage, one batched insert of the invoices; seconds."""
    await conn.execute(
        "CREATE TEMP TABLE raw_invoice (number text, project_id uuid, budget_code_id uuid,"
        " total numeric)"
    )
    started = time.perf_counter()
    rows = await conn.fetch(BASELINE, START)
    await conn.executemany(
        "INSERT INTO raw_invoice VALUES ($1, $2, $3, $4)",
        [(f"R-{n:07d}", r[0], r[1], r[2]) for n, r in enumerate(rows, start=1)],
    )
    return time.perf_counter() - started


INDEPENDENT = """
SELECT u.budget_code_id, u.instance_id, i.price_tier_id, i.disk_gib,
       u.hour_start >= $1 AS late,
       sum(u.vcpu_s) AS vcpu_s, sum(u.memory_gib_s) AS memory_s, sum(u.running_s) AS running_s,
       sum(coalesce((u.gpu_s ->> 'A100')::numeric, 0)) AS gpu_s
FROM billing.usage u JOIN billing.instance i ON i.id = u.instance_id
GROUP BY 1, 2, 3, 4, 5
"""


async def mismatches(conn: asyncpg.Connection) -> tuple[int, int]:
    """Invoices whose total differs from the raw usage priced in Python; and invoice count."""
    amounts: dict[tuple[Any, Any], list[Decimal]] = defaultdict(lambda: [Decimal(0)] * 4)
    for row in await conn.fetch(INDEPENDENT, CHANGE):
        tier = next(n for n, t in TIER_IDS.items() if t == row["price_tier_id"])
        rates = TIERS[tier][-1] if row["late"] else TIERS[tier][0]
        vcpu, memory, storage, a100 = (Decimal(x) for x in rates[1:])
        line = amounts[(row["budget_code_id"], row["instance_id"])]
        line[0] += row["vcpu_s"] * vcpu / 3600
        line[1] += row["memory_s"] * memory / 3600
        line[2] += row["running_s"] * row["disk_gib"] * storage / MONTH_S
        line[3] += row["gpu_s"] * a100 / 3600
    expected: dict[Any, Decimal] = defaultdict(Decimal)
    for (budget_code_id, _), parts in amounts.items():
        expected[budget_code_id] += sum(
            (p.quantize(CENT, ROUND_HALF_UP) for p in parts), Decimal(0)
        )
    issued = {
        r["budget_code_id"]: r["total"]
        for r in await conn.fetch("SELECT budget_code_id, total FROM billing.invoice")
    }
    wrong = 0
    for code, total in expected.items():
        if issued.get(code) != total:
            wrong += 1
            print(f"mismatch {code}: issued {issued.get(code)}, expected {total}", file=sys.stderr)
    wrong += sum(1 for code in issued if code not in expected)
    return wrong, len(issued)


async def main() -> None:
    configure_logging("bench", level="WARNING")
    async with bench_servers() as (database_url, nats_url):
        await asyncio.to_thread(upgrade, "compgrid_billing", database_url)
        conn = await asyncpg.connect(database_url)
        try:
            await setup(conn)
            raw_s = await baseline(conn)
            settings = Settings(
                database_url=database_url,
                nats_url=nats_url,
                log_level="WARNING",
                period_close_after_s=0,
                monthly_run=False,
                invoice_batch=1000,
            )
            app, deps = build(settings, mailer=NoMail())
            try:
                times = await ours(deps)
            finally:
                await app.engine.dispose()
            wrong, invoices = await mismatches(conn)
            entries = await conn.fetchval("SELECT count(*) FROM billing.charge")
            rows = await conn.fetchval("SELECT count(*) FROM billing.usage")
        finally:
            await conn.close()
    if invoices != PROJECTS:
        wrong += abs(PROJECTS - invoices)
    report(
        "billing",
        times["total"],
        "s",
        raw_s,
        raw_s / times["total"],
        invoices=invoices,
        mismatches=wrong,
        rows=rows,
        ledger_entries=entries,
        rating_s=round(times["rating"], 3),
        budgets_s=round(times["budgets"], 3),
        invoicing_s=round(times["invoicing"], 3),
    )


if __name__ == "__main__":
    asyncio.run(main())
