"""Disks cost money while they exist: running hours from metering, stopped hours accrued."""

from __future__ import annotations

from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal

from compgrid_billing.use_cases.invoicing import run_period
from compgrid_billing.use_cases.storage import accrue
from compgrid_events.inventory import InstanceState
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
from tests.runtime.integration.waiting import wait_until

MONTH_S = Decimal(730 * 3600)
LEDGER = (
    "SELECT hour_start, sum(storage_gib_s) AS gib_s, sum(vcpu_s) AS vcpu_s FROM billing.charge"
    " WHERE instance_id = :i GROUP BY hour_start ORDER BY hour_start"
)
RATED_LATE = (
    "SELECT id FROM billing.charge WHERE instance_id = :i AND hour_start = :h"
    " AND usage_revision = 1"
)


async def test_a_stopped_disk_is_charged_until_it_is_deleted(
    world: World, clean_billing: Servers
) -> None:
    day = past_day(20)
    rates = Rates(vcpu=Decimal("0.04"), memory=Decimal(0), storage=Decimal("0.10"))
    async with running_billing(clean_billing) as (_, deps):
        tenant = await world.tenant(rates=rates)
        vm = await world.instance(tenant, disk_gib=100)
        # started at 10:30, ran until 12:00, stopped until its deletion at 15:15
        await world.state(
            tenant, vm, InstanceState.RUNNING, at=hour(day, 10) + timedelta(minutes=30)
        )
        await world.usage(tenant, vm, hour(day, 10), seconds=Decimal(1800))
        await world.usage(tenant, vm, hour(day, 11))
        await world.state(tenant, vm, InstanceState.STOPPED, at=hour(day, 12))
        await world.state(
            tenant, vm, InstanceState.DELETED, at=hour(day, 15) + timedelta(minutes=15)
        )

        async def disk_known() -> bool:
            rows = await query(
                clean_billing, "SELECT disk_until FROM billing.instance WHERE id = :i", i=vm
            )
            return bool(rows) and rows[0].disk_until is not None

        await wait_until(disk_known, 20, "billing knows the disk's life")
        await accrue(deps)  # the service's own periodic round may have been first
        accrued = await query(
            clean_billing,
            "SELECT hour_start FROM billing.usage WHERE instance_id = :i AND revision = 0"
            " ORDER BY hour_start",
            i=vm,
        )
        assert [r.hour_start for r in accrued] == [hour(day, h) for h in (12, 13, 14, 15)]
        assert await accrue(deps) == 0  # nothing new the second time
        rows = await wait_for_rows(clean_billing, LEDGER, 6, i=vm)
        result = await run_period(deps, hour(day), hour(day + timedelta(days=1)), "test")
        assert result.issued_now == 1
    by_hour = {r.hour_start.hour: r for r in rows}
    assert sorted(by_hour) == [10, 11, 12, 13, 14, 15]
    assert by_hour[10].gib_s == 100 * 1800  # from the start at 10:30
    assert all(by_hour[h].gib_s == 100 * 3600 for h in (11, 12, 13, 14))
    assert by_hour[15].gib_s == 100 * 900  # until the deletion at 15:15
    assert by_hour[13].vcpu_s == 0
    assert by_hour[11].vcpu_s == 2 * 3600
    seconds = Decimal(1800 + 4 * 3600 + 900)
    storage = (100 * seconds * Decimal("0.10") / MONTH_S).quantize(Decimal("0.01"), ROUND_HALF_UP)
    vcpu = (Decimal(2 * 5400) * Decimal("0.04") / 3600).quantize(Decimal("0.01"), ROUND_HALF_UP)
    invoice = (await query(clean_billing, "SELECT total FROM billing.invoice"))[0]
    assert invoice.total == storage + vcpu


async def test_late_metering_replaces_an_accrued_hour_without_charging_twice(
    world: World, clean_billing: Servers
) -> None:
    day = past_day(21)
    rates = Rates(vcpu=Decimal("0.04"), memory=Decimal(0), storage=Decimal("0.10"))
    async with running_billing(clean_billing) as (_, deps):
        tenant = await world.tenant(rates=rates)
        vm = await world.instance(tenant, disk_gib=50)
        await world.state(tenant, vm, InstanceState.RUNNING, at=hour(day, 8))

        async def disk_known() -> bool:
            rows = await query(
                clean_billing, "SELECT disk_since FROM billing.instance WHERE id = :i", i=vm
            )
            return bool(rows) and rows[0].disk_since is not None

        await wait_until(disk_known, 20, "billing knows the disk")
        # 08:00 and 09:00 without usage; the service's own periodic round may have been first
        # and accrued every hour since, up to now
        await accrue(deps, now=hour(day, 10) + timedelta(hours=1))
        accrued = await query(
            clean_billing,
            "SELECT hour_start FROM billing.charge WHERE instance_id = :i AND usage_revision = 0"
            " AND hour_start < :h ORDER BY hour_start",
            i=vm,
            h=hour(day, 10),
        )
        assert [r.hour_start for r in accrued] == [hour(day, 8), hour(day, 9)]
        await world.usage(tenant, vm, hour(day, 9))  # metering's hour comes late
        await wait_for_rows(clean_billing, RATED_LATE, 1, i=vm, h=hour(day, 9))
        rows = await query(clean_billing, LEDGER, i=vm)
    # keyed by the whole hour: the service's round may have charged the same hours of later days
    by_hour = {r.hour_start: r for r in rows}
    assert by_hour[hour(day, 9)].gib_s == 50 * 3600  # the disk once, not twice
    assert by_hour[hour(day, 9)].vcpu_s == 2 * 3600  # and the running hour's vCPU added
    assert by_hour[hour(day, 8)].gib_s == 50 * 3600
