"""Budget thresholds and exhaustion by webhook: signed per Standard Webhooks (checked with
``standardwebhooks`` by a receiver of the test's own on loopback), to the endpoints subscribed
to them only, logged like invoice deliveries."""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID, uuid4

from compgrid_billing.use_cases.commands import create_webhook
from compgrid_billing.use_cases.queries import list_deliveries
from compgrid_events import billing_api as api
from compgrid_runtime.rpc import Caller
from compgrid_runtime.tokens import Principal
from tests.billing.integration.conftest import Rates, World, hour, past_day, running_billing
from tests.billing.integration.test_delivery import FAST, Receiver, known, receiving
from tests.harness.servers import Servers
from tests.runtime.integration.waiting import wait_until

FINANCE = Caller(principal=Principal(user_id=uuid4(), roles=frozenset({"finance"}), projects={}))


def pi_of(project_id: UUID) -> Caller:
    """The project's PI."""
    projects = {project_id: "pi"}
    return Caller(principal=Principal(user_id=uuid4(), roles=frozenset(), projects=projects))


async def test_a_crossed_threshold_and_exhaustion_reach_the_endpoints_subscribed_to_them(
    world: World, clean_billing: Servers
) -> None:
    day = past_day(3)
    # one hour of a 2-vCPU, 4 GiB instance costs 2 x 1.00 + 4 x 0.25 = 3.00 (no disk)
    rates = Rates(vcpu=Decimal(1), memory=Decimal("0.25"), storage=Decimal(0))
    async with (
        receiving(Receiver()) as receiver,
        running_billing(clean_billing, **FAST) as (_, deps),
    ):
        tenant = await world.tenant(funding=Decimal(10), rates=rates, behaviour="block_new")
        await known(clean_billing, tenant)
        pi = pi_of(tenant.project_id)
        budget_events = [api.BUDGET_THRESHOLD_CROSSED, api.BUDGET_EXHAUSTED]
        for path, types in (("/budget", budget_events), ("/invoices", [api.INVOICE_ISSUED])):
            created = await create_webhook(
                deps,
                pi,
                api.CreateWebhook(
                    project_id=tenant.project_id, url=receiver.url(path), event_types=types
                ),
            )
            assert created.secret is not None
            receiver.secrets[path] = created.secret
        vm = await world.instance(tenant, disk_gib=0, held=Decimal(0))
        for h in range(2):  # 6.00 of 10: the 50 % threshold
            await world.usage(tenant, vm, hour(day, h))

        async def received(count: int) -> bool:
            return len([h for h in receiver.at("/budget") if h.verified]) >= count

        await wait_until(lambda: received(1), 20, "the 50 % webhook")
        for h in range(2, 4):  # 12.00 of 10: 80 %, 100 % and exhausted
            await world.usage(tenant, vm, hour(day, h))
        await wait_until(lambda: received(4), 20, "the 80 %, 100 % and exhaustion webhooks")

        async def logged_delivered() -> bool:
            done = api.DeliveriesQuery(state="delivered")
            return len((await list_deliveries(deps, FINANCE, done)).deliveries) >= 4

        await wait_until(logged_delivered, 20, "the deliveries logged as delivered")
        log = await list_deliveries(deps, FINANCE, api.DeliveriesQuery())

    hits = receiver.at("/budget")
    assert all(h.verified is not None for h in hits), [h.error for h in hits]
    first = hits[0].verified
    assert first is not None
    assert first["type"] == "budget.threshold_crossed"
    assert first["data"] | {"event_id": None, "runs_out_on": None} == {
        "event_id": None,
        "budget_code_id": str(tenant.budget_code_id),
        "budget_code": tenant.code,
        "budget_name": first["data"]["budget_name"],
        "project_id": str(tenant.project_id),
        "project_name": tenant.project_name,
        "threshold_percent": "50",
        "spent": {"amount": "6.00", "currency": "EUR"},
        "funding": {"amount": "10.00", "currency": "EUR"},
        "runs_out_on": None,
    }
    types = sorted((h.verified or {})["type"] for h in hits)
    assert types == ["budget.exhausted"] + ["budget.threshold_crossed"] * 3
    percents = sorted((h.verified or {})["data"].get("threshold_percent", "-") for h in hits[1:])
    assert percents == ["-", "100", "80"]
    exhausted = next(h.verified for h in hits if (h.verified or {})["type"] == "budget.exhausted")
    assert exhausted is not None
    assert exhausted["data"]["behaviour"] == "block_new"
    assert len({h.message_id for h in hits}) == 4, "one webhook-id per event"
    assert receiver.at("/invoices") == [], "an endpoint gets only what it subscribed to"
    logged = [d for d in log.deliveries if d.recipient == receiver.url("/budget")]
    assert sorted(d.event_type for d in logged) == sorted(types)
    assert all(d.state == "delivered" and d.invoice_id is None for d in logged)
    assert {d.message_id for d in logged} == {h.message_id for h in hits}
