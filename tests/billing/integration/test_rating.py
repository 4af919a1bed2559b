"""Rating on real NATS and Postgres: usage priced at the rates of its hour, into the ledger."""

from __future__ import annotations

from decimal import Decimal

from tests.billing.integration.conftest import (
    Rates,
    World,
    hour,
    past_day,
    running_billing,
    wait_for_rows,
)
from tests.harness.servers import Servers

LEDGER = "SELECT * FROM billing.charge WHERE instance_id = :i ORDER BY id"


async def test_usage_is_priced_with_the_rates_of_its_hour(
    world: World, clean_billing: Servers
) -> None:
    day = past_day()
    rates = Rates(
        vcpu=Decimal("0.04"),
        memory=Decimal("0.005"),
        storage=Decimal("0.1"),
        gpu={"A100": Decimal("2.5")},
    )
    async with running_billing(clean_billing):
        tenant = await world.tenant(rates=rates)
        vm = await world.instance(tenant, vcpus=4, disk_gib=100, gpus={"A100": 1})
        await world.usage(
            tenant, vm, hour(day, 1), seconds=Decimal(3600), vcpus=4, gpus={"A100": 1}
        )
        await world.usage(
            tenant, vm, hour(day, 2), seconds=Decimal(1800), vcpus=4, gpus={"A100": 1}
        )
        rows = await wait_for_rows(clean_billing, LEDGER, 2, i=vm)
    first = rows[0]
    assert first.kind == "usage"
    scale = Decimal(730 * 3600)  # ledger amounts are money x the seconds of a month
    assert first.vcpu_s == 4 * 3600
    assert first.vcpu_scaled / scale == Decimal("0.16")  # 4 vCPU-hours x 0.04
    assert first.memory_scaled / scale == Decimal("0.02")  # 4 GiB-hours x 0.005
    assert Decimal(str(first.gpu_scaled["A100"])) / scale == Decimal("2.5")
    storage = Decimal(100) * Decimal(3600) * Decimal("0.1") / scale
    assert first.storage_scaled / scale == storage
    assert rows[1].vcpu_scaled / scale == Decimal("0.08")
