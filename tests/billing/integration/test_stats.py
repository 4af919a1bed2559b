"""``rpc.billing.stats.get`` over real NATS and Postgres, with real tokens from the auth harness.

The test plays auth, the inventory and metering with ``World``: four projects (three in EUR,
one in USD), instances of two types requested by three people — two of whom billing knows from
``UserRegistered``, one it never heard of — and hours of usage inside and outside the window,
one of them corrected by a newer rollup. Every hour is priced with 73 GiB disks at 0.10 per
GiB-month (0.01 an hour) and the default rates, so a running hour of a ``standard`` instance
(2 vCPUs, 4 GiB) costs exactly 0.11 and one of a ``highmem`` instance (4 vCPUs, 8 GiB) 0.21.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy import text

from compgrid_events.auth import Role, UserRegistered
from compgrid_events.inventory import InstanceRequested, Resources
from compgrid_runtime.db import create_engine
from compgrid_runtime.errors import DomainError
from compgrid_runtime.rpc import call
from tests.billing.integration.conftest import (
    Tenant,
    World,
    hour,
    past_day,
    running_billing,
    tag,
    wait_for_rows,
)
from tests.harness.auth import ADMIN_EMAIL, ADMIN_PASSWORD, AuthHarness
from tests.harness.servers import Servers

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis]

DISK_GIB = 73
"""At 0.10 per GiB-month a 73 GiB disk costs exactly 0.01 per hour."""
SHAPES = {"standard": (2, Decimal(4)), "highmem": (4, Decimal(8))}
"""vCPUs and GiB of memory of each instance type."""


@dataclass
class Tokens:
    """Who asks: finance, an admin, a PI and a researcher (a project member)."""

    finance: str
    admin: str
    pi: str
    member: str


@dataclass
class Person:
    """Someone who requests instances (name and address empty when billing lacks them)."""

    user_id: UUID
    display_name: str = ""
    email: str = ""


@pytest.fixture
async def billing(world: World, clean_billing: Servers, auth: AuthHarness) -> AsyncIterator[None]:
    """Billing running beside the auth harness, with auth's signing keys loaded."""
    async with running_billing(clean_billing) as (app, _):
        await asyncio.wait_for(app.keys.ready.wait(), 10)
        yield


@pytest.fixture
async def tokens(auth: AuthHarness, billing: None) -> Tokens:
    """Tokens of one person in each role, made through auth."""
    admin = await auth.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    logins = {}
    for role in ("finance", "pi", "member"):
        _, email = await auth.user(role, admin)
        logins[role] = await auth.login(email)
    return Tokens(admin=admin, **logins)


async def stats(
    world: World, token: str | None, since: datetime, until: datetime, **more: Any
) -> Any:
    """Call ``rpc.billing.stats.get`` as the gateway does; return its data."""
    body = {"since": since.isoformat(), "until": until.isoformat(), **more}
    return await call(
        world.nc,
        "billing",
        "stats.get",
        body,
        token=token,
        client_address="198.51.100.21",
        request_id=uuid.uuid4().hex,
        timeout_s=15,
    )


async def person(world: World, name: str) -> Person:
    """Someone auth registered (billing learns their name and address)."""
    who = Person(uuid.uuid4(), f"{name} {tag()}", f"{name.lower()}-{tag()}@uni.example")
    await world.publish(
        UserRegistered(
            user_id=who.user_id,
            email=who.email,
            display_name=who.display_name,
            roles=(Role.MEMBER,),
        )
    )
    return who


async def requested(world: World, tenant: Tenant, instance_type: str, by: Person) -> UUID:
    """An admitted instance of a type, requested by someone (the inventory's event)."""
    instance_id = uuid.uuid4()
    vcpus, memory_gib = SHAPES[instance_type]
    await world.publish(
        InstanceRequested(
            instance_id=instance_id,
            version=2,
            name=f"vm-{tag()}",
            project_id=tenant.project_id,
            budget_code_id=tenant.budget_code_id,
            requested_by=by.user_id,
            instance_type=instance_type,
            image="debian-12",
            resources=Resources(vcpus=vcpus, memory_mib=int(memory_gib) * 1024, disk_gib=DISK_GIB),
            hourly_price=Decimal("0.10"),
            currency=tenant.currency,
            price_tier_id=tenant.tier_id,
            held_amount=Decimal(0),
        )
    )
    return instance_id


async def ran(
    world: World, tenant: Tenant, vm: UUID, instance_type: str, at: datetime, **more: Any
) -> None:
    """Metering's closed hour of an instance of a type."""
    vcpus, memory_gib = SHAPES[instance_type]
    await world.usage(tenant, vm, at, vcpus=vcpus, memory_gib=memory_gib, **more)


async def forget_requester(real: Servers, instance_id: UUID) -> None:
    """Make an instance look like one billing learnt before it kept who requested it."""
    engine = create_engine(real.database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE billing.instance SET requested_by = NULL WHERE id = :i"),
                {"i": instance_id},
            )
    finally:
        await engine.dispose()


def amounts(rows: list[dict[str, Any]], *keys: str) -> list[tuple[Any, ...]]:
    """Rows of a reply as tuples of ``keys`` (amounts and hours as decimals)."""
    numeric = {"amount", "running_hours"}
    return [tuple(Decimal(r[k]) if k in numeric else r[k] for k in keys) for r in rows]


async def test_stats_sum_the_ledger_per_day_type_project_and_requester_for_finance_and_admins(
    world: World, tokens: Tokens, clean_billing: Servers
) -> None:
    day = past_day(30)
    next_day = day + timedelta(days=1)
    since, until = hour(day), hour(day + timedelta(days=2))
    alpha = await world.tenant(name=f"alpha {tag()}")
    beta = await world.tenant(name=f"beta {tag()}")
    gamma = await world.tenant(name=f"gamma {tag()}")
    delta = await world.tenant(name=f"delta {tag()}", currency="USD")
    ada, grace = await person(world, "Ada"), await person(world, "Grace")
    ghost = Person(uuid.uuid4())  # requested an instance, but billing never heard of them
    await wait_for_rows(
        clean_billing, "SELECT id FROM billing.account WHERE id IN (:a, :g)", 2,
        a=ada.user_id, g=grace.user_id,
    )  # fmt: skip

    a1 = await requested(world, alpha, "standard", ada)
    a2 = await requested(world, alpha, "highmem", grace)
    b1 = await requested(world, beta, "standard", grace)
    b2 = await requested(world, beta, "highmem", ghost)
    c1 = await requested(world, gamma, "standard", ada)
    d1 = await requested(world, delta, "standard", ada)
    for h in (1, 2, 3):
        await ran(world, alpha, a1, "standard", hour(day, h))  # 3 x 0.11
    await ran(world, alpha, a1, "standard", hour(next_day, 0))  # 0.11
    for h in (5, 6):
        await ran(world, alpha, a2, "highmem", hour(day, h))  # 2 x 0.21
    await ran(world, beta, b1, "standard", hour(next_day, 2), seconds=Decimal(1800))
    for h in (3, 4):
        await ran(world, beta, b2, "highmem", hour(next_day, h))  # 2 x 0.21
    await ran(world, gamma, c1, "standard", hour(day, 10))  # 0.11
    await ran(world, delta, d1, "standard", hour(day, 1))  # 0.11 USD
    # outside the window: the hour before it and the hour it ends at
    await ran(world, alpha, a1, "standard", hour(day - timedelta(days=1), 23))
    await ran(world, alpha, a1, "standard", until)
    await wait_for_rows(clean_billing, "SELECT id FROM billing.charge", 13)
    # a corrected rollup: b1 ran 2700 s, not 1800 (an adjustment of the hour)
    await ran(world, beta, b1, "standard", hour(next_day, 2), seconds=Decimal(2700), revision=2)
    await wait_for_rows(clean_billing, "SELECT id FROM billing.charge", 14)
    await forget_requester(clean_billing, c1)

    seen = await stats(world, tokens.finance, since, until)
    assert seen == await stats(world, tokens.admin, since, until), "admins see what finance sees"
    assert (seen["since"][:19], seen["until"][:19]) == (
        since.isoformat()[:19], until.isoformat()[:19]
    )  # fmt: skip
    assert amounts(seen["earnings"], "day", "currency", "amount") == [
        (str(day), "EUR", Decimal("0.86")),  # a1 0.33 + a2 0.42 + c1 0.11
        (str(day), "USD", Decimal("0.11")),
        (str(next_day), "EUR", Decimal("0.6125")),  # a1 0.11 + b1 0.0825 + b2 0.42
    ]
    assert amounts(
        seen["by_instance_type"],
        "instance_type",
        "currency",
        "instances",
        "running_hours",
        "amount",
    ) == [
        ("highmem", "EUR", 2, Decimal(4), Decimal("0.84")),
        ("standard", "EUR", 3, Decimal("5.75"), Decimal("0.6325")),  # b1's hour counted once
        ("standard", "USD", 1, Decimal(1), Decimal("0.11")),
    ]
    assert amounts(
        seen["top_projects"], "project_id", "name", "currency", "instances", "amount"
    ) == [
        (str(alpha.project_id), alpha.project_name, "EUR", 2, Decimal("0.86")),
        (str(beta.project_id), beta.project_name, "EUR", 2, Decimal("0.5025")),
        (str(gamma.project_id), gamma.project_name, "EUR", 1, Decimal("0.11")),
        (str(delta.project_id), delta.project_name, "USD", 1, Decimal("0.11")),
    ]
    people = ("user_id", "display_name", "email", "currency", "instances", "amount")
    assert amounts(seen["top_users"], *people) == [
        (str(grace.user_id), grace.display_name, grace.email, "EUR", 2, Decimal("0.5025")),
        (str(ada.user_id), ada.display_name, ada.email, "EUR", 1, Decimal("0.44")),
        (str(ghost.user_id), "", "", "EUR", 1, Decimal("0.42")),
        (str(ada.user_id), ada.display_name, ada.email, "USD", 1, Decimal("0.11")),
    ], "c1 has no requester any more: its 0.11 counts for gamma, for nobody"

    top = await stats(world, tokens.finance, since, until, top=1)
    assert amounts(top["top_projects"], "project_id", "currency") == [
        (str(alpha.project_id), "EUR"), (str(delta.project_id), "USD")
    ]  # fmt: skip
    assert amounts(top["top_users"], "user_id", "currency") == [
        (str(grace.user_id), "EUR"), (str(ada.user_id), "USD")
    ]  # fmt: skip
    assert top["earnings"] == seen["earnings"]
    assert top["by_instance_type"] == seen["by_instance_type"]

    first_day = await stats(world, tokens.finance, since, hour(next_day))
    assert amounts(first_day["earnings"], "day", "currency") == [
        (str(day), "EUR"), (str(day), "USD")
    ]  # fmt: skip
    assert amounts(first_day["top_projects"], "project_id", "amount") == [
        (str(alpha.project_id), Decimal("0.75")),  # a1 0.33 + a2 0.42
        (str(gamma.project_id), Decimal("0.11")),
        (str(delta.project_id), Decimal("0.11")),
    ]
    quiet = await stats(
        world, tokens.admin, hour(day - timedelta(days=9)), hour(day - timedelta(days=2))
    )
    assert (quiet["earnings"], quiet["by_instance_type"]) == ([], [])
    assert (quiet["top_projects"], quiet["top_users"]) == ([], [])


async def test_only_finance_and_admins_may_read_the_stats(world: World, tokens: Tokens) -> None:
    day = past_day(3)
    since, until = hour(day), hour(day + timedelta(days=1))
    for token in (tokens.pi, tokens.member):
        with pytest.raises(DomainError) as refused:
            await stats(world, token, since, until)
        assert (refused.value.status, refused.value.code) == (403, "forbidden")
    with pytest.raises(DomainError) as anonymous:
        await stats(world, None, since, until)
    assert anonymous.value.status == 401
    for body in ({"top": 0}, {"top": 101}):
        with pytest.raises(DomainError) as invalid:
            await stats(world, tokens.finance, since, until, **body)
        assert (invalid.value.status, invalid.value.field) == (422, "top")
    with pytest.raises(DomainError) as too_long:
        await stats(world, tokens.finance, since, since + timedelta(days=401))
    assert too_long.value.status == 422
