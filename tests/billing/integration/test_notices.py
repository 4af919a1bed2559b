"""Threshold and exhaustion mails to the PI and the project's billing contacts."""

from __future__ import annotations

import asyncio
from datetime import date
from decimal import Decimal
from uuid import uuid4

from compgrid_billing.use_cases.commands import set_contacts
from compgrid_events import billing_api as api
from compgrid_events.auth import BudgetCodeUpdated
from compgrid_events.base import Money
from compgrid_events.billing import BudgetThresholdCrossed
from compgrid_runtime.rpc import Caller
from compgrid_runtime.tokens import Principal
from tests.billing.integration.conftest import (
    Outbox,
    Rates,
    World,
    hour,
    past_day,
    running_billing,
)
from tests.harness.servers import Servers
from tests.harness.streams import StreamWatch
from tests.runtime.integration.waiting import wait_until

ADMIN = Caller(principal=Principal(user_id=uuid4(), roles=frozenset({"admin"}), projects={}))


async def test_thresholds_and_exhaustion_are_mailed_once_to_the_pi_and_contacts(
    world: World, clean_billing: Servers
) -> None:
    mail = Outbox()
    day = past_day(3)
    # one hour of a 2-vCPU, 4 GiB instance costs 2 x 1.00 + 4 x 0.25 = 3.00 (no disk)
    rates = Rates(vcpu=Decimal(1), memory=Decimal("0.25"), storage=Decimal(0))
    async with running_billing(clean_billing, mailer=mail) as (_, deps):
        tenant = await world.tenant(funding=Decimal(10), rates=rates, behaviour="block_new")
        vm = await world.instance(tenant, disk_gib=0, held=Decimal(0))

        async def project_known() -> bool:
            try:
                await set_contacts(
                    deps,
                    ADMIN,
                    api.SetContacts(project_id=tenant.project_id, emails=["grants@uni.example"]),
                )
            except Exception:
                return False
            return True

        await wait_until(project_known, 15, "billing knows the project")
        for h in range(2):  # 6.00 of 10: the 50 % threshold
            await world.usage(tenant, vm, hour(day, h))

        async def told(count: int) -> bool:
            return len(mail.sent) >= count

        await wait_until(lambda: told(1), 20, "the 50 % mail")
        for h in range(2, 4):  # 12.00 of 10: 80 %, 100 % and exhausted
            await world.usage(tenant, vm, hour(day, h))
        await wait_until(lambda: told(4), 20, "the 80 %, 100 % and exhaustion mails")
        await world.usage(tenant, vm, hour(day, 1))  # a repeat tells nobody anything again
        await asyncio.sleep(1.5)
    subjects = [m.subject for m in mail.sent]
    assert len(mail.sent) == 4, subjects
    assert f"budget code {tenant.code} has reached 50 % of its funding" in subjects[0]
    assert "Spent 6.00 EUR of 10.00 EUR" in mail.sent[0].text
    assert any("80 %" in s for s in subjects)
    assert any("100 %" in s for s in subjects)
    exhausted = next(m for m in mail.sent if "exhausted" in m.subject)
    assert "new instances are refused" in exhausted.text
    for message in mail.sent:
        assert set(message.to) == {tenant.pi_email, "grants@uni.example"}


async def test_a_threshold_is_announced_again_after_funding_took_spending_below_it(
    world: World, clean_billing: Servers
) -> None:
    mail = Outbox()
    day = past_day(2)
    rates = Rates(vcpu=Decimal(1), memory=Decimal("0.25"), storage=Decimal(0))
    async with (
        running_billing(clean_billing, mailer=mail),
        StreamWatch.of(world.nc, BudgetThresholdCrossed) as crossings,
    ):
        tenant = await world.tenant(
            funding=Decimal(10), rates=rates, thresholds=(Decimal(80),), name="Rearm lab"
        )
        vm = await world.instance(tenant, disk_gib=0, held=Decimal(0))
        for h in range(3):  # 9.00 of 10: 80 % crossed
            await world.usage(tenant, vm, hour(day, h))

        def mine(e: BudgetThresholdCrossed) -> bool:
            return e.budget_code_id == tenant.budget_code_id

        await crossings.wait_for(BudgetThresholdCrossed, where=mine)
        await world.publish(  # the grants office doubles the funding: 9.00 of 20 is 45 %
            BudgetCodeUpdated(
                budget_code_id=tenant.budget_code_id,
                project_id=tenant.project_id,
                code=tenant.code,
                name="Grant, extended",
                funding=Money(amount=Decimal(20), currency="EUR"),
                valid_from=date(2020, 1, 1),
                valid_to=date(2099, 12, 31),
                soft_thresholds_percent=(Decimal(80),),
                version=2,
            )
        )
        await world.usage(tenant, vm, hour(day, 3))  # 12.00 of 20: 60 %, nothing to say
        await asyncio.sleep(1.0)
        assert len(await crossings.matching(BudgetThresholdCrossed, where=mine)) == 1
        for h in range(4, 6):  # 18.00 of 20: 90 %, crossed again
            await world.usage(tenant, vm, hour(day, h))
        again = await crossings.wait_for(BudgetThresholdCrossed, where=mine, count=2)
        await asyncio.sleep(1.0)
        assert len(await crossings.matching(BudgetThresholdCrossed, where=mine)) == 2
    assert again.spent.amount == Decimal(18)
    assert again.funding.amount == Decimal(20)
