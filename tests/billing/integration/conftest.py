"""Billing in-process on real NATS JetStream and Postgres.

Tests play auth, the inventory and metering: they publish ``UserRegistered``,
``ProjectCreated``, ``BudgetCodeCreated``, ``PriceTierChanged``, ``InstanceRequested``,
``InstanceStateChanged`` and ``UsageRecorded`` to JetStream exactly as those services' outbox
relays do, and watch what billing publishes on the BILLING stream.

Billing runs cover every budget code of the database, so each test starts from an empty
billing schema (only billing tests write it).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import nats
import pytest
from nats.aio.client import Client as NatsClient
from sqlalchemy import text

from compgrid_billing.bootstrap import build
from compgrid_billing.config import Settings
from compgrid_billing.use_cases.deps import Deps
from compgrid_events.auth import BudgetCodeCreated, ProjectCreated, Role, UserRegistered
from compgrid_events.base import Event, Money, utc_now
from compgrid_events.inventory import (
    InstanceRequested,
    InstanceState,
    InstanceStateChanged,
    PriceTierChanged,
    Resources,
)
from compgrid_events.metering import UsageRecorded
from compgrid_runtime.app import ServiceApp
from compgrid_runtime.db import create_engine
from compgrid_runtime.mail import Mail
from tests.harness.servers import Servers, with_service_schema
from tests.runtime.integration.waiting import wait_until

BILLING_TABLES = ", ".join(
    f"billing.{name}"
    for name in (
        "delivery_attempt", "delivery", "invoice_line", "invoice", "billing_run", "webhook",
        "charge", "usage", "instance_run", "instance", "budget_notice", "budget", "project",
        "account", "price_rate", "parked", "inbox",
    )
)  # fmt: skip
EPOCH = datetime(2020, 1, 1, tzinfo=UTC)


def tag() -> str:
    """A short random suffix for names that must be unique in the run."""
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
async def billing_schema(real: Servers) -> Servers:
    """The run's database with the billing schema, and every stream in place."""
    return await with_service_schema(real, "compgrid_billing")


@pytest.fixture
async def clean_billing(billing_schema: Servers) -> Servers:
    """An empty billing schema (invoice numbers start again at 1)."""
    engine = create_engine(billing_schema.database_url)
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {BILLING_TABLES}"))
        await conn.execute(text("UPDATE billing.invoice_counter SET last_number = 0"))
    await engine.dispose()
    return billing_schema


class Outbox:
    """A mailer that keeps what it would send (for tests that do not need an SMTP server)."""

    def __init__(self) -> None:
        self.sent: list[Mail] = []

    async def send(self, mail: Mail) -> None:
        self.sent.append(mail)


def billing_settings(real: Servers, **overrides: Any) -> Settings:
    """Settings of a billing process of one test: fast loops, no monthly schedule."""
    values: dict[str, Any] = {
        "database_url": real.database_url,
        "nats_url": real.nats_url,
        "log_level": "WARNING",
        "outbox_poll_interval_s": 0.05,
        "rating_interval_s": 0.5,
        "delivery_interval_s": 0.2,
        "monthly_run": False,
        "period_close_after_s": 0,
        "allow_http_webhooks": True,
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def running_billing(
    real: Servers, *, mailer: Any | None = None, **overrides: Any
) -> AsyncIterator[tuple[ServiceApp, Deps]]:
    """Start a billing process in this one; stop it after."""
    app, deps = build(billing_settings(real, **overrides), mailer=mailer or Outbox())
    await app.start()
    try:
        yield app, deps
    finally:
        await app.stop()


def hour(day: date, h: int = 0) -> datetime:
    """The UTC hour ``h`` of a day."""
    return datetime(day.year, day.month, day.day, h, tzinfo=UTC)


@dataclass
class Rates:
    """A tier's rates per hour (storage per GiB-month)."""

    vcpu: Decimal = Decimal("0.04")
    memory: Decimal = Decimal("0.005")
    storage: Decimal = Decimal("0.10")
    gpu: dict[str, Decimal] = field(default_factory=dict)


@dataclass
class Tenant:
    """One project with one budget code, its PI, and a price tier."""

    pi_id: UUID
    pi_email: str
    project_id: UUID
    project_name: str
    budget_code_id: UUID
    code: str
    tier_id: UUID
    currency: str = "EUR"


@dataclass
class World:
    """The test as auth, inventory and metering: publishes their events."""

    nc: NatsClient
    published: list[Event] = field(default_factory=list)
    _versions: dict[UUID, int] = field(default_factory=dict)

    async def publish(self, event: Event) -> None:
        """Publish as a relay does (the event id dedups a re-publish)."""
        await self.nc.jetstream().publish(
            event.subject, event.to_json(), headers={"Nats-Msg-Id": str(event.event_id)}
        )
        self.published.append(event)

    async def tenant(
        self,
        *,
        funding: Decimal = Decimal(1000),
        valid_from: date = date(2020, 1, 1),
        valid_to: date = date(2099, 12, 31),
        thresholds: tuple[Decimal, ...] = (Decimal(50), Decimal(80), Decimal(100)),
        behaviour: str = "stop_instances",
        currency: str = "EUR",
        rates: Rates | None = None,
        rates_from: datetime = EPOCH,
        name: str | None = None,
    ) -> Tenant:
        """A PI, a project, a funded budget code and a tier with rates."""
        t = tag()
        tenant = Tenant(
            pi_id=uuid.uuid4(),
            pi_email=f"pi-{t}@uni.example",
            project_id=uuid.uuid4(),
            project_name=name or f"Project {t}",
            budget_code_id=uuid.uuid4(),
            code=f"GR-{t}",
            tier_id=uuid.uuid4(),
            currency=currency,
        )
        await self.publish(
            UserRegistered(
                user_id=tenant.pi_id,
                email=tenant.pi_email,
                display_name=f"Dr. PI {t}",
                roles=(Role.PI,),
            )
        )
        await self.publish(
            ProjectCreated(
                project_id=tenant.project_id, name=tenant.project_name, pi_user_id=tenant.pi_id
            )
        )
        await self.publish(
            BudgetCodeCreated(
                budget_code_id=tenant.budget_code_id,
                project_id=tenant.project_id,
                code=tenant.code,
                name=f"Grant {t}",
                funding=Money(amount=funding, currency=currency),
                valid_from=valid_from,
                valid_to=valid_to,
                soft_thresholds_percent=thresholds,
                hard_limit_behaviour=behaviour,
            )
        )
        await self.rates(tenant, rates or Rates(), rates_from)
        return tenant

    async def rates(self, tenant: Tenant, rates: Rates, effective_from: datetime) -> None:
        """New rates of the tenant's tier from a date on."""
        await self.publish(
            PriceTierChanged(
                price_tier_id=tenant.tier_id,
                name=f"tier-{str(tenant.tier_id)[:8]}",
                currency=tenant.currency,
                effective_from=effective_from,
                vcpu_hour_amount=rates.vcpu,
                memory_gib_hour_amount=rates.memory,
                storage_gib_month_amount=rates.storage,
                gpu_hour_amounts=rates.gpu,
            )
        )

    async def instance(
        self,
        tenant: Tenant,
        *,
        vcpus: int = 2,
        memory_mib: int = 4096,
        disk_gib: int = 20,
        gpus: dict[str, int] | None = None,
        hourly_price: Decimal = Decimal("0.10"),
        held: Decimal | None = None,
        name: str | None = None,
    ) -> UUID:
        """An admitted instance (``InstanceRequested``) of the tenant."""
        instance_id = uuid.uuid4()
        self._versions[instance_id] = 2
        await self.publish(
            InstanceRequested(
                instance_id=instance_id,
                version=2,
                name=name or f"vm-{tag()}",
                project_id=tenant.project_id,
                budget_code_id=tenant.budget_code_id,
                requested_by=tenant.pi_id,
                instance_type="standard",
                image="debian-12",
                resources=Resources(
                    vcpus=vcpus,
                    memory_mib=memory_mib,
                    disk_gib=disk_gib,
                    gpus=tuple({"model": m, "count": c} for m, c in (gpus or {}).items()),
                ),
                hourly_price=hourly_price,
                currency=tenant.currency,
                price_tier_id=tenant.tier_id,
                held_amount=held if held is not None else hourly_price * 24,
            )
        )
        return instance_id

    async def state(
        self,
        tenant: Tenant,
        instance_id: UUID,
        state: InstanceState,
        at: datetime | None = None,
    ) -> None:
        """The inventory's next lifecycle state of an instance (``at``: when it happened)."""
        self._versions[instance_id] += 1
        event = InstanceStateChanged(
            instance_id=instance_id,
            version=self._versions[instance_id],
            project_id=tenant.project_id,
            state=state,
        )
        await self.publish(event.model_copy(update={"occurred_at": at}) if at else event)

    async def usage(
        self,
        tenant: Tenant,
        instance_id: UUID,
        hour_start: datetime,
        *,
        seconds: Decimal = Decimal(3600),
        vcpus: int = 2,
        memory_gib: Decimal = Decimal(4),
        gpus: dict[str, int] | None = None,
        revision: int = 1,
    ) -> UsageRecorded:
        """Metering's closed hour of one instance."""
        event = UsageRecorded(
            instance_id=instance_id,
            project_id=tenant.project_id,
            budget_code_id=tenant.budget_code_id,
            hour_start=hour_start,
            revision=revision,
            running_seconds=seconds,
            vcpu_seconds=seconds * vcpus,
            memory_gib_seconds=seconds * memory_gib,
            gpu_seconds={m: seconds * c for m, c in (gpus or {}).items()},
        )
        await self.publish(event)
        return event


@pytest.fixture
async def world(clean_billing: Servers) -> AsyncIterator[World]:
    """Publishes other services' events for the test."""
    client = await nats.connect(clean_billing.nats_url)
    yield World(client)
    await client.close()


async def query(real: Servers, sql: str, **params: Any) -> list[Any]:
    """Rows of one SQL query on the run's database."""
    engine = create_engine(real.database_url)
    try:
        async with engine.connect() as conn:
            return list(await conn.execute(text(sql), params))
    finally:
        await engine.dispose()


async def wait_for_rows(
    real: Servers, sql: str, count: int, timeout_s: float = 20, **params: Any
) -> list[Any]:
    """Wait until a query returns at least ``count`` rows; return them."""
    found: list[Any] = []

    async def enough() -> bool:
        found[:] = await query(real, sql, **params)
        return len(found) >= count

    await wait_until(enough, timeout_s, f"{count} row(s) of {sql}")
    return found


def past_day(days_ago: int = 40) -> date:
    """A UTC day well in the past."""
    return (utc_now() - timedelta(days=days_ago)).date()
