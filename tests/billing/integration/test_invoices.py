"""Billing runs on real NATS and Postgres: invoices per project and budget code, checked
against an independent calculation from the raw usage."""

from __future__ import annotations

from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
from sqlalchemy.exc import DBAPIError

from compgrid_billing.use_cases.invoicing import run_period
from compgrid_events.billing import InvoiceIssued
from compgrid_events.metering import UsageRecorded
from compgrid_runtime.errors import Invalid
from tests.billing.integration.conftest import (
    Rates,
    World,
    hour,
    past_day,
    query,
    running_billing,
    wait_for_rows,
)
from tests.harness.servers import Servers
from tests.harness.streams import StreamWatch

CENT = Decimal("0.01")
MONTH_S = Decimal(730 * 3600)


def expected_total(usage: list[UsageRecorded], rates: Rates, disk_gib: int) -> Decimal:
    """The invoice total computed from raw usage: one line per instance and resource, each
    rounded half-up to the cent, summed."""
    total = Decimal(0)
    for instance_id in {u.instance_id for u in usage}:
        mine = [u for u in usage if u.instance_id == instance_id]
        amounts = [
            sum((u.vcpu_seconds for u in mine), Decimal(0)) * rates.vcpu / 3600,
            sum((u.memory_gib_seconds for u in mine), Decimal(0)) * rates.memory / 3600,
            sum((u.running_seconds for u in mine), Decimal(0)) * disk_gib * rates.storage / MONTH_S,
        ]
        for model, rate in rates.gpu.items():
            gpu_s = sum((u.gpu_seconds.get(model, Decimal(0)) for u in mine), Decimal(0))
            amounts.append(gpu_s * rate / 3600)
        total += sum((a.quantize(CENT, ROUND_HALF_UP) for a in amounts), Decimal(0))
    return total


async def test_a_run_invoices_each_code_once_with_totals_from_the_raw_usage(
    world: World, clean_billing: Servers
) -> None:
    day = past_day(60)
    start, end = hour(day), hour(day + timedelta(days=2))
    rates = Rates(vcpu=Decimal("0.0433"), memory=Decimal("0.0071"), gpu={"A100": Decimal("2.75")})
    async with (
        running_billing(clean_billing) as (_, deps),
        StreamWatch.of(world.nc, InvoiceIssued) as issued,
    ):
        a = await world.tenant(rates=rates)
        b = await world.tenant(rates=rates)
        sent: dict[object, list[UsageRecorded]] = {a.budget_code_id: [], b.budget_code_id: []}
        for tenant, gpus in ((a, {"A100": 1}), (b, None)):
            for n in range(2):
                vm = await world.instance(tenant, disk_gib=50, gpus=gpus)
                for h in range(0, 40, 3):
                    sent[tenant.budget_code_id].append(
                        await world.usage(
                            tenant, vm, hour(day, 0) + timedelta(hours=h),
                            seconds=Decimal(3600 - 7 * h - n), gpus=gpus,
                        )
                    )  # fmt: skip
        total_rows = sum(len(v) for v in sent.values())
        await wait_for_rows(clean_billing, "SELECT id FROM billing.charge", total_rows)
        result = await run_period(deps, start, end, "test")
        assert result.issued_now == 2
        again = await run_period(deps, start, end, "test")
        assert again.issued_now == 0
        assert again.run.invoices == 2
        events = await issued.wait_settled(InvoiceIssued, count=2)
    assert len(events) == 2
    invoices = await query(clean_billing, "SELECT * FROM billing.invoice ORDER BY sequence")
    assert [i.number for i in invoices] == ["CG-0000001", "CG-0000002"]
    for inv in invoices:
        usage = sent[inv.budget_code_id]
        assert inv.total == expected_total(usage, rates, 50)
        lines = await query(
            clean_billing, "SELECT * FROM billing.invoice_line WHERE invoice_id = :i", i=inv.id
        )
        assert sum(x.amount for x in lines) == inv.total
        assert {x.kind for x in lines} == {"usage"}
    assert {e.number for e in events} == {"CG-0000001", "CG-0000002"}


async def test_open_and_future_periods_are_refused_and_nothing_is_stored(
    world: World, clean_billing: Servers
) -> None:
    from compgrid_events.base import utc_now

    now = utc_now().replace(minute=0, second=0, microsecond=0)
    async with running_billing(clean_billing, period_close_after_s=3600) as (_, deps):
        with pytest.raises(Invalid, match="still open"):
            await run_period(deps, now - timedelta(days=1), now, "test")
        with pytest.raises(Invalid, match="future"):
            await run_period(deps, now + timedelta(hours=1), now + timedelta(days=1), "test")
        with pytest.raises(Invalid, match="on the hour"):
            await run_period(
                deps, now - timedelta(days=3, minutes=5), now - timedelta(days=2), "test"
            )
    assert await query(clean_billing, "SELECT * FROM billing.billing_run") == []


async def test_a_correction_after_issue_lands_on_the_next_invoice_and_issued_ones_never_change(
    world: World, clean_billing: Servers
) -> None:
    day = past_day(50)
    rates = Rates()
    async with running_billing(clean_billing) as (_, deps):
        tenant = await world.tenant(rates=rates)
        vm = await world.instance(tenant)
        await world.usage(tenant, vm, hour(day, 5), seconds=Decimal(3600))
        await wait_for_rows(clean_billing, "SELECT id FROM billing.charge", 1)
        first = await run_period(deps, hour(day), hour(day + timedelta(days=1)), "test")
        assert first.issued_now == 1
        # metering corrects the hour: half of it was not running
        await world.usage(tenant, vm, hour(day, 5), seconds=Decimal(1800), revision=2)
        await wait_for_rows(
            clean_billing, "SELECT id FROM billing.charge WHERE kind = 'adjustment'", 1
        )
        second = await run_period(
            deps, hour(day + timedelta(days=1)), hour(day + timedelta(days=2)), "test"
        )
        assert second.issued_now == 1
    invoices = await query(clean_billing, "SELECT * FROM billing.invoice ORDER BY sequence")
    assert invoices[0].total == Decimal("0.10")  # 2 vCPU-h x 0.04 + 4 GiB-h x 0.005 + storage
    assert invoices[1].subtotal == 0
    assert invoices[1].adjustments == Decimal("-0.05")
    assert invoices[1].total == Decimal("-0.05")
    with pytest.raises(DBAPIError, match="never change"):
        await query(clean_billing, "UPDATE billing.invoice SET total = 0")
