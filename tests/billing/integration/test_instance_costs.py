"""What one instance has cost: priced charges from the same ledger ``costs`` sums, to the cent,
whatever hour the instance was created in, and billing's own estimate for the running time in
hours not priced yet."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from uuid import UUID, uuid4

import pytest

from compgrid_billing.use_cases.deps import Deps
from compgrid_billing.use_cases.instance_costs import get_instance_costs
from compgrid_billing.use_cases.queries import costs
from compgrid_events import billing_api as api
from compgrid_events.inventory import InstanceState
from compgrid_runtime.errors import NotFound
from compgrid_runtime.rpc import Caller
from compgrid_runtime.tokens import Principal
from tests.billing.integration.conftest import (
    Rates,
    World,
    hour,
    past_day,
    running_billing,
)
from tests.harness.servers import Servers
from tests.runtime.integration.waiting import wait_until


def member(user_id: UUID, project_id: UUID) -> Caller:
    """A member of the project (who requested the instance, in these tests)."""
    principal = Principal(user_id=user_id, roles=frozenset(), projects={project_id: "member"})
    return Caller(principal=principal)


async def test_charges_agree_with_costs_and_the_unpriced_time_is_estimated(
    world: World, clean_billing: Servers
) -> None:
    day = past_day(2)
    created = hour(day, 0) + timedelta(minutes=20)  # inside the hour its first usage is in
    stopped = hour(day, 2) + timedelta(minutes=10)
    rates = Rates(vcpu=Decimal("0.013"), memory=Decimal("0.0071"), storage=Decimal(0))
    async with running_billing(clean_billing, projection_wait_s=0.2) as (_, deps):
        tenant = await world.tenant(rates=rates)
        vm = await world.instance(tenant, disk_gib=0, hourly_price=Decimal("0.0544"))
        for state, at in (
            (InstanceState.STARTING, created),
            (InstanceState.RUNNING, created),
            (InstanceState.STOPPING, stopped),
        ):
            await world.state(tenant, vm, state, at=at)
        await world.usage(tenant, vm, hour(day, 0), seconds=Decimal(2400))
        await world.usage(tenant, vm, hour(day, 1), seconds=Decimal(3600))
        requester = member(tenant.pi_id, tenant.project_id)
        which = api.InstanceCostsQuery(instance_id=vm)

        async def stopped_known() -> bool:
            try:  # billing waits 0.2 s here for an instance it has not heard of yet
                found = await get_instance_costs(deps, requester, which)
            except NotFound:
                return False
            return found.unrated_running_seconds == 600

        await wait_until(stopped_known, 20, "two hours priced, and the instance stopped")
        before = await get_instance_costs(deps, requester, which)
        window = api.CostsQuery(
            of=api.CostsOf.INSTANCE, id=vm, since=hour(day, 0), until=hour(day + timedelta(days=1))
        )
        report = await costs(deps, requester, window)
        assert before.charged == report.total > 0
        assert round(before.charged, 2) == round(report.total, 2)
        assert before.resources == report.resources
        assert before.estimated_unrated == Decimal("0.009067")  # 600 s at 0.0544 an hour
        assert before.estimated_total == before.charged + before.estimated_unrated
        assert before.hourly_price.amount == Decimal("0.0544")

        await world.usage(tenant, vm, hour(day, 2), seconds=Decimal(600))

        async def priced() -> bool:
            found = await get_instance_costs(deps, requester, which)
            return found.unrated_running_seconds == 0

        await wait_until(priced, 20, "the last hour priced")
        after = await get_instance_costs(deps, requester, which)
        assert after.unrated_running_seconds == after.estimated_unrated == 0
        assert after.charged == (await costs(deps, requester, window)).total
        assert after.estimated_total == after.charged > before.charged

        stranger = member(uuid4(), uuid4())
        with pytest.raises(NotFound):
            await get_instance_costs(deps, stranger, which)
        with pytest.raises(NotFound):
            await get_instance_costs(deps, requester, api.InstanceCostsQuery(instance_id=uuid4()))


async def test_a_running_instance_is_estimated_up_to_now(
    world: World, clean_billing: Servers
) -> None:
    async with running_billing(clean_billing) as (_, deps):
        tenant = await world.tenant()
        vm = await world.instance(tenant, disk_gib=0, hourly_price=Decimal("3.60"))
        await world.state(tenant, vm, InstanceState.STARTING)
        await world.state(tenant, vm, InstanceState.RUNNING)
        requester = member(tenant.pi_id, tenant.project_id)
        which = api.InstanceCostsQuery(instance_id=vm)

        async def running() -> bool:
            found = await get_instance_costs(deps, requester, which)
            return found.unrated_running_seconds > 0

        await wait_until(running, 20, "billing knows the instance runs")
        first = await get_instance_costs(deps, requester, which)
        await wait_until(
            lambda: _grew(deps, requester, which, first.unrated_running_seconds), 10, "time passes"
        )
        assert first.charged == 0
        assert first.estimated_unrated == (first.unrated_running_seconds / 1000).quantize(
            Decimal("0.000001")
        )  # 3.60 an hour is 0.001 a second


async def _grew(deps: Deps, caller: Caller, query: api.InstanceCostsQuery, than: Decimal) -> bool:
    found = await get_instance_costs(deps, caller, query)
    return found.unrated_running_seconds > than
