"""Budget codes on real NATS and Postgres: holds, thresholds, exhaustion, the forecast, usage
that cannot be priced yet, price corrections and repeated usage, each checked against an
independent calculation from what the test published."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from uuid import UUID

import pytest
from nats.aio.client import Client as NatsClient

from compgrid_billing.use_cases import rating
from compgrid_billing.use_cases.deps import Deps
from compgrid_events.auth import BudgetCodeUpdated, HardLimitBehaviour
from compgrid_events.base import Money, utc_now, uuid7
from compgrid_events.billing import (
    BudgetExhausted,
    BudgetState,
    BudgetStatusChanged,
    BudgetThresholdCrossed,
)
from compgrid_events.inventory import InstanceRequested, InstanceState, Resources
from compgrid_events.metering import UsageRecorded
from compgrid_events.streams import AUTH, BILLING, INVENTORY, METERING
from tests.billing.integration.conftest import (
    Rates,
    Tenant,
    World,
    hour,
    past_day,
    query,
    running_billing,
    wait_for_rows,
)
from tests.harness.servers import Servers
from tests.harness.streams import StreamWatch
from tests.runtime.integration.waiting import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.nats]

WINDOW_DAYS = 7
"""``forecast_window_days`` of the test settings (the default)."""
MONTH_S = Decimal(730 * 3600)
SCALE = MONTH_S
"""Ledger amounts are money x the seconds of a 730-hour month."""
FLAT = Rates(vcpu=Decimal("0.50"), memory=Decimal(0), storage=Decimal(0))
"""One euro per hour of 2 vCPUs and nothing else: every amount is easy to follow."""
LEDGER = "SELECT * FROM billing.charge WHERE instance_id = :i ORDER BY id"
FOREVER = date(2099, 12, 31)


def cost(usage: UsageRecorded, rates: Rates, disk_gib: int = 20) -> Decimal:
    """What one hour of usage costs at ``rates``, computed from the event."""
    storage_s = usage.storage_gib_seconds or disk_gib * usage.running_seconds
    gpu = sum((s * rates.gpu[m] / 3600 for m, s in usage.gpu_seconds.items()), Decimal(0))
    return (
        usage.vcpu_seconds * rates.vcpu / 3600
        + usage.memory_gib_seconds * rates.memory / 3600
        + storage_s * rates.storage / MONTH_S
        + gpu
    )


def forecast(funding: Decimal, charged: Decimal, spent_in_window: Decimal) -> date | None:
    """The day the funding runs out at the burn of the window (None: nothing burns)."""
    if spent_in_window <= 0:
        return None
    burn_per_day = spent_in_window / WINDOW_DAYS
    days = ((funding - charged) / burn_per_day).to_integral_value(rounding=ROUND_FLOOR)
    return utc_now().date() + timedelta(days=int(days))


def this_hour() -> datetime:
    """The start of the current UTC hour."""
    return utc_now().replace(minute=0, second=0, microsecond=0)


def budget_events(world: World) -> StreamWatch:
    """A watch on every budget event billing publishes from now on."""
    return StreamWatch(world.nc, BILLING.name, "billing.budget.>")


def euros(amount: str) -> Money:
    """An amount in EUR as billing publishes it."""
    return Money(amount=Decimal(amount), currency="EUR")


async def ready(real: Servers, tenant: Tenant) -> None:
    """Wait until billing knows the tenant's budget code and its tier's rates."""
    await wait_for_rows(
        real,
        "SELECT 1 FROM billing.budget b, billing.price_rate r WHERE b.id = :b AND r.tier_id = :t",
        1,
        b=tenant.budget_code_id,
        t=tenant.tier_id,
    )


async def status(real: Servers, watch: StreamWatch, tenant: Tenant) -> BudgetStatusChanged:
    """The status billing last published for the code (the version its row records now)."""
    rows = await query(
        real, "SELECT status_version FROM billing.budget WHERE id = :b", b=tenant.budget_code_id
    )
    version = rows[0].status_version
    return await watch.wait_for(
        BudgetStatusChanged,
        where=lambda e: e.budget_code_id == tenant.budget_code_id and e.version == version,
    )


async def status_version(real: Servers, tenant: Tenant) -> int:
    """How many statuses billing has published for the code."""
    rows = await query(
        real, "SELECT status_version FROM billing.budget WHERE id = :b", b=tenant.budget_code_id
    )
    return int(rows[0].status_version)


async def drained(nc: NatsClient, stream: str, consumer: str) -> None:
    """Wait until a billing durable has handled and acknowledged everything published."""

    async def done() -> bool:
        info = await nc.jetstream().consumer_info(stream, f"billing-{consumer}")
        return info.num_pending == 0 and info.num_ack_pending == 0

    await wait_until(done, 20, f"billing-{consumer} consumed everything")
    await asyncio.sleep(0.3)  # and the outbox relay published what that committed


async def resend(world: World, event: UsageRecorded) -> None:
    """The same hour and revision again, as a new message (another event id)."""
    await world.publish(event.model_copy(update={"event_id": uuid7()}))


async def request(
    world: World, tenant: Tenant, instance_id: UUID, *, held: Decimal = Decimal(0)
) -> InstanceRequested:
    """``InstanceRequested`` for an instance whose id the test chose (as ``World.instance``)."""
    event = InstanceRequested(
        instance_id=instance_id,
        version=2,
        name=f"vm-{str(instance_id)[:8]}",
        project_id=tenant.project_id,
        budget_code_id=tenant.budget_code_id,
        requested_by=tenant.pi_id,
        instance_type="standard",
        image="debian-12",
        resources=Resources(vcpus=2, memory_mib=4096, disk_gib=20, gpus=()),
        hourly_price=Decimal("0.10"),
        currency=tenant.currency,
        price_tier_id=tenant.tier_id,
        held_amount=held,
    )
    await world.publish(event)
    return event


def updated(
    tenant: Tenant,
    *,
    funding: Decimal,
    valid_from: date = date(2020, 1, 1),
    valid_to: date = FOREVER,
    behaviour: HardLimitBehaviour = HardLimitBehaviour.STOP_INSTANCES,
    version: int = 2,
) -> BudgetCodeUpdated:
    """auth's next full state of the tenant's budget code."""
    return BudgetCodeUpdated(
        budget_code_id=tenant.budget_code_id,
        project_id=tenant.project_id,
        code=tenant.code,
        name=f"Grant {tenant.code}",
        funding=Money(amount=funding, currency=tenant.currency),
        valid_from=valid_from,
        valid_to=valid_to,
        soft_thresholds_percent=(Decimal(50), Decimal(80), Decimal(100)),
        hard_limit_behaviour=behaviour,
        version=version,
    )


async def parked_reasons(deps: Deps, instance_id: UUID) -> dict[datetime, str]:
    """Why each of the instance's unrated hours waits."""
    async with deps.uow() as uow:
        rows = await rating.parked(uow)
    return {row.hour_start: row.reason for row in rows if row.instance_id == instance_id}


async def hour_sums(real: Servers, instance_id: UUID) -> dict[datetime, Decimal]:
    """The sum of the ledger entries of each of the instance's hours."""
    rows = await query(
        real,
        "SELECT hour_start, sum(total_scaled) AS total FROM billing.charge "
        "WHERE instance_id = :i GROUP BY hour_start",
        i=instance_id,
    )
    return {row.hour_start: Decimal(row.total) / SCALE for row in rows}


async def charged(real: Servers, tenant: Tenant) -> Decimal:
    """The budget code's running total of charges."""
    rows = await query(
        real,
        "SELECT charged_scaled FROM billing.budget WHERE id = :b",
        b=tenant.budget_code_id,
    )
    return Decimal(rows[0].charged_scaled) / SCALE


async def test_a_request_holds_its_price_until_charges_replace_it_and_a_stop_releases_it(
    world: World, clean_billing: Servers
) -> None:
    funding = Decimal(1000)
    recent = this_hour() - timedelta(hours=3)
    async with running_billing(clean_billing), budget_events(world) as watch:
        tenant = await world.tenant(funding=funding, rates=FLAT)
        await ready(clean_billing, tenant)
        a = await world.instance(tenant, held=Decimal("2.50"))
        b = await world.instance(tenant, held=Decimal("1.50"))
        instances = "SELECT 1 FROM billing.instance WHERE id IN (:a, :b)"
        await wait_for_rows(clean_billing, instances, 2, a=a, b=b)
        held = await status(clean_billing, watch, tenant)
        assert held.state is BudgetState.OPEN
        assert held.funding == euros("1000")
        assert held.available == euros("996.00")  # both holds: 2.50 + 1.50
        assert set(held.held_instance_ids) == {a, b}
        assert held.runs_out_on is None  # nothing spent yet

        # one hour of a (1.00): its hold of 2.50 still covers more than it was charged
        await world.usage(tenant, a, recent)
        await wait_for_rows(clean_billing, LEDGER, 1, i=a)
        drawn = await status(clean_billing, watch, tenant)
        assert drawn.available == euros("996.00")
        assert set(drawn.held_instance_ids) == {a, b}
        assert drawn.runs_out_on == forecast(funding, Decimal(1), Decimal(1))

        # two hours of b (2.00) outgrow its hold of 1.50: the charges count, not the hold
        await world.usage(tenant, b, recent)
        await world.usage(tenant, b, recent - timedelta(hours=1))
        await wait_for_rows(clean_billing, LEDGER, 2, i=b)
        outgrown = await status(clean_billing, watch, tenant)
        assert outgrown.available == euros("995.50")  # 1000 - max(2.50, 1) - max(1.50, 2)
        assert set(outgrown.held_instance_ids) == {a, b}
        assert outgrown.runs_out_on == forecast(funding, Decimal(3), Decimal(3))

        # a stops: the 1.50 of its hold not yet charged is released
        await world.state(tenant, a, InstanceState.STOPPED)
        released_q = "SELECT 1 FROM billing.instance WHERE id = :i AND NOT hold_active"
        await wait_for_rows(clean_billing, released_q, 1, i=a)
        released = await status(clean_billing, watch, tenant)
        assert released.held_instance_ids == (b,)
        assert released.available == euros("997.00")  # 1000 - charges 3.00 - b's nothing

        await world.state(tenant, b, InstanceState.STOPPED)
        await wait_for_rows(clean_billing, released_q, 1, i=b)
        none_held = await status(clean_billing, watch, tenant)
        assert none_held.held_instance_ids == ()
        assert none_held.available == euros("997.00")

        # an hour metered after the stop is still charged to the code
        await world.usage(tenant, a, recent + timedelta(hours=1))
        await wait_for_rows(clean_billing, LEDGER, 2, i=a)
        late = await status(clean_billing, watch, tenant)
        assert late.available == euros("996.00")
        assert late.held_instance_ids == ()
        assert late.state is BudgetState.OPEN


async def test_thresholds_are_announced_once_each_and_exhaustion_once_until_funding_is_raised(
    world: World, clean_billing: Servers
) -> None:
    day = past_day(20)
    async with running_billing(clean_billing), budget_events(world) as watch:
        tenant = await world.tenant(funding=Decimal(10), rates=FLAT, behaviour="block_new")

        def of_code(e: BudgetThresholdCrossed | BudgetExhausted) -> bool:
            return e.budget_code_id == tenant.budget_code_id

        await ready(clean_billing, tenant)
        vm = await world.instance(tenant, held=Decimal(0))

        async def spend(n: int, amount: str) -> BudgetStatusChanged:
            """Hour ``n`` of the day costs ``amount`` (0.50 per vCPU-hour)."""
            vcpus = int(Decimal(amount) * 2)
            await world.usage(tenant, vm, hour(day, n), vcpus=vcpus)
            await wait_for_rows(clean_billing, LEDGER, n + 1, i=vm)
            return await status(clean_billing, watch, tenant)

        first = await world.usage(tenant, vm, hour(day, 0), vcpus=12)  # 6.00 of 10: 60 %
        await wait_for_rows(clean_billing, LEDGER, 1, i=vm)
        fifty = await watch.wait_for(BudgetThresholdCrossed, where=of_code)
        assert fifty.threshold_percent == 50
        assert fifty.spent == euros("6.00")
        assert fifty.funding == euros("10.00")
        assert (await status(clean_billing, watch, tenant)).available == euros("4.00")

        await resend(world, first)  # metering's relay sent the hour again
        seventy = await spend(1, "1.00")
        assert seventy.available == euros("3.00")
        assert len(await query(clean_billing, LEDGER, i=vm)) == 2  # the repeat charged nothing

        eighty_five = await spend(2, "1.50")
        assert eighty_five.available == euros("1.50")
        eighty = await watch.wait_for(BudgetThresholdCrossed, count=2, where=of_code)
        assert eighty.threshold_percent == 80
        assert eighty.spent == euros("8.50")

        ninety = await spend(3, "0.50")
        assert ninety.state is BudgetState.OPEN

        exhausted = await spend(4, "1.00")  # 10.00 of 10: 100 %
        assert exhausted.state is BudgetState.EXHAUSTED
        assert exhausted.available == euros("0.00")
        assert exhausted.runs_out_on == utc_now().date()
        limit = await watch.wait_for(BudgetExhausted, where=of_code)
        assert limit.behaviour is HardLimitBehaviour.BLOCK_NEW
        assert limit.spent == euros("10.00")
        assert limit.funding == euros("10.00")

        beyond = await spend(5, "0.50")  # more usage of a running instance: still exhausted
        assert beyond.state is BudgetState.EXHAUSTED
        assert beyond.available == euros("-0.50")
        await resend(world, first)
        await drained(world.nc, METERING.name, "usage")

        await world.publish(
            updated(tenant, funding=Decimal(20), behaviour=HardLimitBehaviour.BLOCK_NEW)
        )
        raised = "SELECT 1 FROM billing.budget WHERE id = :b AND funding = 20"
        await wait_for_rows(clean_billing, raised, 1, b=tenant.budget_code_id)
        reopened = await status(clean_billing, watch, tenant)
        assert reopened.state is BudgetState.OPEN
        assert reopened.funding == euros("20.00")
        assert reopened.available == euros("9.50")
        await drained(world.nc, AUTH.name, "identity")

        crossings = await watch.matching(BudgetThresholdCrossed, where=of_code)
        assert [c.threshold_percent for c in crossings] == [50, 80, 100]
        assert crossings[2].spent == euros("10.00")
        assert len(await watch.matching(BudgetExhausted, where=of_code)) == 1
    assert len(await query(clean_billing, LEDGER, i=vm)) == 6


async def test_the_forecast_divides_what_is_left_by_the_burn_of_the_window(
    world: World, clean_billing: Servers
) -> None:
    funding = Decimal(100)
    now = this_hour()
    async with running_billing(clean_billing), budget_events(world) as watch:
        busy = await world.tenant(funding=funding, rates=FLAT)
        idle = await world.tenant(funding=funding, rates=FLAT)
        await ready(clean_billing, busy)
        await ready(clean_billing, idle)
        vm = await world.instance(busy, held=Decimal(0))
        old_vm = await world.instance(idle, held=Decimal(0))
        sent: list[UsageRecorded] = []
        for n in range(3):  # long before the window: spent, but not part of the burn
            sent.append(await world.usage(busy, vm, hour(past_day(30), n), vcpus=4))
            await world.usage(idle, old_vm, hour(past_day(30), n), vcpus=4)
        recent: list[UsageRecorded] = []
        for days in range(6):  # one hour on each of the last six days, 3.00 down to 0.50
            seconds = Decimal(3600 - 600 * days)
            at = now - timedelta(days=days, hours=1)
            recent.append(await world.usage(busy, vm, at, seconds=seconds, vcpus=6))
        await wait_for_rows(clean_billing, LEDGER, 9, i=vm)
        await wait_for_rows(clean_billing, LEDGER, 3, i=old_vm)
        forecast_busy = await status(clean_billing, watch, busy)
        forecast_idle = await status(clean_billing, watch, idle)

    spent_in_window = sum((cost(u, FLAT) for u in recent), Decimal(0))
    spent = spent_in_window + sum((cost(u, FLAT) for u in sent), Decimal(0))
    assert spent_in_window == Decimal("10.50")
    assert spent == Decimal("16.50")
    expected = forecast(funding, spent, spent_in_window)
    assert expected == utc_now().date() + timedelta(days=55)  # 83.50 / (10.50 / 7)
    assert forecast_busy.runs_out_on == expected
    assert forecast_busy.available == euros("83.50")
    assert forecast_idle.runs_out_on is None
    assert forecast_idle.available == euros("94.00")


async def test_usage_outside_the_codes_dates_waits_until_the_dates_cover_it(
    world: World, clean_billing: Servers
) -> None:
    starts = past_day(30)
    before, inside = hour(past_day(40), 5), hour(past_day(20), 5)
    async with running_billing(clean_billing) as (_, deps):
        tenant = await world.tenant(rates=FLAT, valid_from=starts)
        await ready(clean_billing, tenant)
        vm = await world.instance(tenant, held=Decimal(0))
        early = await world.usage(tenant, vm, before)
        valid = await world.usage(tenant, vm, inside)
        stored = "SELECT 1 FROM billing.usage WHERE instance_id = :i"
        await wait_for_rows(clean_billing, stored, 2, i=vm)
        await wait_for_rows(clean_billing, LEDGER, 1, i=vm)
        await asyncio.sleep(1.2)  # the parked-usage loop (every 0.5 s) cannot price it either
        assert await hour_sums(clean_billing, vm) == {inside: cost(valid, FLAT)}
        assert await parked_reasons(deps, vm) == {before: "budget_code_not_valid"}

        await world.publish(updated(tenant, funding=Decimal(1000), valid_from=past_day(60)))
        await wait_for_rows(clean_billing, LEDGER, 2, i=vm)
        assert await parked_reasons(deps, vm) == {}
    assert await hour_sums(clean_billing, vm) == {
        before: cost(early, FLAT),
        inside: cost(valid, FLAT),
    }
    assert await charged(clean_billing, tenant) == cost(early, FLAT) + cost(valid, FLAT)


async def test_usage_of_an_unknown_instance_waits_and_is_rated_once_when_it_is_known(
    world: World, clean_billing: Servers
) -> None:
    day = past_day(15)
    rates = Rates(vcpu=Decimal("0.04"), memory=Decimal("0.005"), storage=Decimal("0.73"))
    vm = uuid.uuid4()
    async with running_billing(clean_billing) as (_, deps):
        tenant = await world.tenant(rates=rates)
        await ready(clean_billing, tenant)
        sent = [
            await world.usage(tenant, vm, hour(day, n), seconds=Decimal(3600 - 900 * n))
            for n in range(3)
        ]
        stored = "SELECT 1 FROM billing.usage WHERE instance_id = :i"
        await wait_for_rows(clean_billing, stored, 3, i=vm)
        await asyncio.sleep(1.2)  # two rounds of the parked-usage loop
        assert await query(clean_billing, LEDGER, i=vm) == []
        assert await parked_reasons(deps, vm) == {u.hour_start: "unknown_instance" for u in sent}

        requested = await request(world, tenant, vm)
        await wait_for_rows(clean_billing, LEDGER, 3, i=vm)
        await world.publish(requested.model_copy(update={"event_id": uuid7()}))
        await drained(world.nc, INVENTORY.name, "instances")
        await asyncio.sleep(1.2)  # and the parked-usage loop had its turns
        assert await parked_reasons(deps, vm) == {}
        entries = await query(clean_billing, LEDGER, i=vm)
    assert [e.kind for e in entries] == ["usage"] * 3
    expected = {u.hour_start: cost(u, rates) for u in sent}
    assert await hour_sums(clean_billing, vm) == expected
    assert sum(e.total_scaled for e in entries) / SCALE == sum(expected.values())
    assert sum(expected.values()) == Decimal("0.27")  # 0.12 + 0.09 + 0.06


async def test_a_price_correction_adjusts_each_hour_it_prices_and_only_once(
    world: World, clean_billing: Servers
) -> None:
    day = past_day(10)
    first = Rates(Decimal("0.04"), Decimal("0.005"), Decimal("0.73"), {"A100": Decimal("2.50")})
    corrected = Rates(Decimal("0.05"), Decimal("0.006"), Decimal("1.46"), {"A100": Decimal(3)})
    amended = Rates(Decimal("0.03"), Decimal("0.002"), Decimal("0.365"), {"A100": Decimal(2)})
    gpus = {"A100": 1}
    since = hour(day, 2)
    async with running_billing(clean_billing):
        tenant = await world.tenant(rates=first)
        await ready(clean_billing, tenant)
        vm = await world.instance(tenant, held=Decimal(0), gpus=gpus)
        sent = [await world.usage(tenant, vm, hour(day, n), gpus=gpus) for n in range(4)]
        await wait_for_rows(clean_billing, LEDGER, 4, i=vm)
        assert await hour_sums(clean_billing, vm) == {u.hour_start: cost(u, first) for u in sent}

        adjustments = "SELECT * FROM billing.charge WHERE instance_id = :i AND kind = 'adjustment'"
        await world.rates(tenant, corrected, since)
        found = await wait_for_rows(clean_billing, adjustments, 2, i=vm)
        assert {a.hour_start for a in found} == {hour(day, 2), hour(day, 3)}
        assert {a.rate_from for a in found} == {since}
        assert await hour_sums(clean_billing, vm) == {
            u.hour_start: cost(u, first if u.hour_start < since else corrected) for u in sent
        }

        await world.rates(tenant, corrected, since)  # the same correction again
        await drained(world.nc, INVENTORY.name, "instances")
        assert len(await query(clean_billing, LEDGER, i=vm)) == 6

        await world.rates(tenant, amended, since)  # the corrected rates corrected in place
        await wait_for_rows(clean_billing, adjustments, 4, i=vm)
        await drained(world.nc, INVENTORY.name, "instances")
    entries = await query(clean_billing, LEDGER, i=vm)
    assert len(entries) == 8
    expected = {u.hour_start: cost(u, first if u.hour_start < since else amended) for u in sent}
    assert await hour_sums(clean_billing, vm) == expected
    assert expected[hour(day, 3)] == Decimal("2.078")  # 2 x 0.03 + 4 x 0.002 + 0.01 + 2 GPU
    assert await charged(clean_billing, tenant) == sum(expected.values())


async def test_repeated_and_older_usage_changes_nothing(
    world: World, clean_billing: Servers
) -> None:
    day = past_day(12)
    async with running_billing(clean_billing), budget_events(world) as watch:
        tenant = await world.tenant(rates=FLAT)
        await ready(clean_billing, tenant)
        vm = await world.instance(tenant, held=Decimal(0))
        newer = await world.usage(tenant, vm, hour(day, 7), revision=2)
        await wait_for_rows(clean_billing, LEDGER, 1, i=vm)
        version = (await status(clean_billing, watch, tenant)).version
        published = len(await watch.matching(BudgetStatusChanged))

        await resend(world, newer)
        await world.usage(tenant, vm, hour(day, 7), seconds=Decimal(1800), revision=1)
        await drained(world.nc, METERING.name, "usage")
        assert len(await query(clean_billing, LEDGER, i=vm)) == 1
        assert await status_version(clean_billing, tenant) == version
        assert len(await watch.matching(BudgetStatusChanged)) == published
        stored = await query(
            clean_billing, "SELECT revision, running_s FROM billing.usage WHERE instance_id = :i",
            i=vm,
        )  # fmt: skip
        assert [(s.revision, s.running_s) for s in stored] == [(2, 3600)]

        # a newer revision still corrects the hour
        fixed = await world.usage(tenant, vm, hour(day, 7), seconds=Decimal(2700), revision=3)
        await wait_for_rows(clean_billing, LEDGER, 2, i=vm)
    assert await hour_sums(clean_billing, vm) == {hour(day, 7): cost(fixed, FLAT)}
    assert cost(fixed, FLAT) == Decimal("0.75")
