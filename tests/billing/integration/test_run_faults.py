"""Billing runs under stress on real NATS and Postgres: two runs of one period at once, a run
SIGKILLed between invoice batches and run again, and the monthly schedule. Every outcome is
checked against an independent calculation from the usage the test published."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from uuid import UUID

import pytest

from compgrid_billing.bootstrap import build
from compgrid_billing.use_cases.deps import Deps
from compgrid_billing.use_cases.invoicing import run_due_month, run_period
from compgrid_events.base import utc_now
from compgrid_events.metering import UsageRecorded
from tests.billing.integration.conftest import (
    Outbox,
    Rates,
    World,
    billing_settings,
    hour,
    past_day,
    query,
    running_billing,
    wait_for_rows,
)
from tests.harness.servers import Servers

pytestmark = [pytest.mark.postgres, pytest.mark.nats]

CENT = Decimal("0.01")
MONTH_S = Decimal(730 * 3600)
DISK_GIB = 30
RATES = Rates(vcpu=Decimal("0.0433"), memory=Decimal("0.0071"), storage=Decimal("0.10"))
KILLED = -signal.SIGKILL
INVOICES = "SELECT * FROM billing.invoice ORDER BY sequence"


def expected_total(usage: list[UsageRecorded]) -> Decimal:
    """An invoice total from raw usage: one line per instance and resource, each rounded
    half-up to the cent, summed."""
    total = Decimal(0)
    for instance_id in {u.instance_id for u in usage}:
        mine = [u for u in usage if u.instance_id == instance_id]
        running_s = sum((u.running_seconds for u in mine), Decimal(0))
        amounts = [
            sum((u.vcpu_seconds for u in mine), Decimal(0)) * RATES.vcpu / 3600,
            sum((u.memory_gib_seconds for u in mine), Decimal(0)) * RATES.memory / 3600,
            running_s * DISK_GIB * RATES.storage / MONTH_S,
        ]
        total += sum((a.quantize(CENT, ROUND_HALF_UP) for a in amounts), Decimal(0))
    return total


async def tenants_with_usage(
    world: World, count: int, hours: list[datetime]
) -> dict[UUID, list[UsageRecorded]]:
    """``count`` tenants, each with one instance running a different share of ``hours``;
    return what each budget code was sent."""
    sent: dict[UUID, list[UsageRecorded]] = {}
    for n in range(count):
        tenant = await world.tenant(rates=RATES)
        vm = await world.instance(tenant, disk_gib=DISK_GIB, vcpus=1 + n % 4)
        sent[tenant.budget_code_id] = [
            await world.usage(
                tenant, vm, at, seconds=Decimal(3600 - 37 * n - 11 * h), vcpus=1 + n % 4
            )
            for h, at in enumerate(hours)
        ]
    return sent


async def all_rated(real: Servers, sent: dict[UUID, list[UsageRecorded]]) -> None:
    """Wait until every hour sent has its ledger entry."""
    count = sum(len(v) for v in sent.values())
    await wait_for_rows(real, "SELECT id FROM billing.charge", count, timeout_s=30)


async def assert_invoiced_exactly(
    real: Servers, sent: dict[UUID, list[UsageRecorded]], end: datetime
) -> None:
    """One invoice per budget code, numbered 1..N without gaps, each with the total of its
    usage, and every ledger entry of an hour before ``end`` covered by exactly one invoice."""
    invoices = await query(real, INVOICES)
    assert [i.sequence for i in invoices] == list(range(1, len(sent) + 1))
    assert [i.number for i in invoices] == [f"CG-{n:07d}" for n in range(1, len(sent) + 1)]
    assert sorted(i.budget_code_id for i in invoices) == sorted(sent)
    for inv in invoices:
        assert inv.total == expected_total(sent[inv.budget_code_id]), inv.budget_code
        assert inv.adjustments == 0
        lines = await query(
            real, "SELECT amount FROM billing.invoice_line WHERE invoice_id = :i", i=inv.id
        )
        assert sum(x.amount for x in lines) == inv.total
    assert sum(i.total for i in invoices) == sum(expected_total(u) for u in sent.values())
    coverage = await query(
        real,
        "SELECT c.id, count(i.id) AS invoices FROM billing.charge c "
        "LEFT JOIN billing.invoice i ON i.budget_code_id = c.budget_code_id "
        "AND c.hour_start < i.period_end AND c.id <= i.watermark "
        "WHERE c.hour_start < :end GROUP BY c.id",
        end=end,
    )
    assert len(coverage) == sum(len(u) for u in sent.values())
    assert {row.invoices for row in coverage} == {1}


@contextlib.asynccontextmanager
async def second_billing(real: Servers, **overrides: object) -> AsyncIterator[Deps]:
    """The ports of another billing process (its own database pool) that only runs periods."""
    app, deps = build(billing_settings(real, **overrides), mailer=Outbox())
    try:
        yield deps
    finally:
        await app.engine.dispose()


def cli_environment(real: Servers, **settings: object) -> dict[str, str]:
    """The environment of a ``compgrid-billing`` process on the run's servers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPGRID_FAULT_")}
    env["COMPGRID_ENVIRONMENT"] = "development"
    env["COMPGRID_BILLING_DATABASE_URL"] = real.database_url
    env["COMPGRID_BILLING_NATS_URL"] = real.nats_url
    env["COMPGRID_BILLING_LOG_LEVEL"] = "WARNING"
    for name, value in settings.items():
        env[name if name.startswith("COMPGRID_") else f"COMPGRID_BILLING_{name.upper()}"] = str(
            value
        )
    return env


async def billing_command(
    env: dict[str, str], start: datetime, end: datetime, timeout_s: float = 90
) -> tuple[int, str]:
    """Run ``python -m compgrid_billing run --from --to``; return its exit code and output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "compgrid_billing", "run",
        "--from", start.isoformat(), "--to", end.isoformat(),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        os.kill(process.pid, signal.SIGKILL)
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


async def test_two_runs_of_one_period_at_once_issue_one_set_of_invoices(
    world: World, clean_billing: Servers
) -> None:
    day = past_day(35)
    start, end = hour(day), hour(day + timedelta(days=1))
    async with (
        running_billing(clean_billing, invoice_batch=2) as (_, deps),
        second_billing(clean_billing, invoice_batch=2) as other,
    ):
        sent = await tenants_with_usage(world, 7, [hour(day, h) for h in (1, 5, 9, 23)])
        await all_rated(clean_billing, sent)
        first, second = await asyncio.gather(
            run_period(deps, start, end, "test a"), run_period(other, start, end, "test b")
        )
        again = await run_period(other, start, end, "test c")
    assert first.issued_now + second.issued_now == 7
    for result in (first, second, again):
        assert result.run.state == "completed"
        assert result.run.invoices == 7
    assert again.issued_now == 0
    assert len(await query(clean_billing, "SELECT id FROM billing.billing_run")) == 1
    await assert_invoiced_exactly(clean_billing, sent, end)


async def test_a_run_killed_between_batches_is_completed_by_running_it_again(
    world: World, clean_billing: Servers
) -> None:
    day = past_day(45)
    start, end = hour(day), hour(day + timedelta(days=2))
    async with running_billing(clean_billing) as (_, deps):
        sent = await tenants_with_usage(
            world, 12, [hour(day) + timedelta(hours=h) for h in (3, 20, 30)]
        )
        await all_rated(clean_billing, sent)

        faulty = cli_environment(
            clean_billing,
            invoice_batch=5,
            COMPGRID_FAULT_POINT="billing.after_invoice_batch",
            COMPGRID_FAULT_AFTER=1,
        )
        code, out = await billing_command(faulty, start, end)
        assert code == KILLED, out
        issued = await query(clean_billing, INVOICES)
        assert [i.sequence for i in issued] == list(range(1, 11))  # two batches of five
        runs = await query(clean_billing, "SELECT * FROM billing.billing_run")
        assert [r.state for r in runs] == ["running"]

        code, out = await billing_command(
            cli_environment(clean_billing, invoice_batch=5), start, end
        )
        assert code == 0, out
        assert "completed, 12 invoice(s), 2 issued now" in out

        third = await run_period(deps, start, end, "test")
    assert third.issued_now == 0
    assert third.run.invoices == 12
    await assert_invoiced_exactly(clean_billing, sent, end)
    counter = await query(clean_billing, "SELECT last_number FROM billing.invoice_counter")
    assert [c.last_number for c in counter] == [12]


async def test_the_schedule_invoices_last_month_once_after_it_is_due(
    world: World, clean_billing: Servers
) -> None:
    this_month = utc_now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    last_month = (this_month - timedelta(days=1)).replace(day=1)
    month = (last_month - timedelta(days=1)).replace(day=1)  # two months ago: the one invoiced
    assert month.tzinfo is UTC
    async with running_billing(clean_billing) as (_, deps):
        sent = await tenants_with_usage(
            world, 2, [month + timedelta(days=d, hours=h) for d, h in ((0, 0), (9, 13), (20, 7))]
        )
        late = await tenants_with_usage(world, 1, [last_month + timedelta(hours=2)])
        await all_rated(clean_billing, sent | late)

        early = await run_due_month(deps, now=last_month + timedelta(hours=1))
        assert early is None  # before monthly_run_after_h (6 h) into the month
        assert await query(clean_billing, "SELECT id FROM billing.billing_run") == []

        due = await run_due_month(deps, now=last_month + timedelta(hours=7))
        assert due is not None
        assert due.issued_now == 2
        assert (due.run.period_start, due.run.period_end) == (month, last_month)
        assert due.run.state == "completed"
        assert due.run.started_by == "schedule"

        assert await run_due_month(deps, now=last_month + timedelta(hours=7)) is None
        assert await run_due_month(deps, now=last_month + timedelta(days=3)) is None
    invoices = await query(clean_billing, INVOICES)
    assert {(i.period_start, i.period_end) for i in invoices} == {(month, last_month)}
    await assert_invoiced_exactly(clean_billing, sent, last_month)  # not the later hour
