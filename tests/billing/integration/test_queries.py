"""Billing's request/reply operations over real NATS, with real tokens from a real auth service.

The test calls ``rpc.billing.<operation>`` exactly as the gateway will: a request envelope with
an access token signed by the auth harness (``tests/harness/auth.py``), which billing verifies
against the JWKS auth publishes in its key bucket (``ServiceApp``'s ``KeyWatcher``; billing
needs no extra setting, only the auth service running and the keys loaded).

People, the project, its membership and its budget codes are created through auth's own
operations (``users.create``, ``projects.create``, ``projects.add_member``,
``budget_codes.create``), so the project ids in the tokens are the ids billing learns from the
``UserRegistered``/``ProjectCreated``/``BudgetCodeCreated`` events auth's outbox relay publishes
on the AUTH stream; the test does not publish billing's view of them itself. It plays the
inventory and metering (price tiers, instances, usage) with ``World``, using the auth ids.

Amounts are chosen to be exact decimals (73 GiB disks at 0.10 per GiB-month, seconds in
multiples of 900), so the ledger's sums equal the independent calculation to the last digit.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Any
from uuid import UUID

import pytest

from compgrid_billing.use_cases.deps import Deps
from compgrid_events.base import utc_now
from compgrid_events.metering import UsageRecorded
from compgrid_runtime.errors import DomainError
from compgrid_runtime.rpc import call
from tests.billing.integration.conftest import (
    EPOCH,
    Rates,
    Tenant,
    World,
    hour,
    past_day,
    query,
    running_billing,
    tag,
    wait_for_rows,
)
from tests.harness.auth import ADMIN_EMAIL, ADMIN_PASSWORD, AuthHarness
from tests.harness.servers import Servers

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis]

CENT = Decimal("0.01")
MONTH_S = Decimal(730 * 3600)
DISK_GIB = 73
"""At 0.10 per GiB-month a 73 GiB disk costs exactly 0.01 per hour."""
RATES = Rates(
    vcpu=Decimal("0.04"),
    memory=Decimal("0.005"),
    storage=Decimal("0.10"),
    gpu={"A100": Decimal("2.50")},
)
FUNDING_A = Decimal(20)
THRESHOLDS_A = (Decimal(10), Decimal(50), Decimal(80))
FUNDING_B = Decimal(1000)
Key = tuple[str, str]
"""A resource and its model (the GPU model, else empty)."""


class Billing:
    """The running billing process, called over NATS as the gateway calls it."""

    def __init__(self, world: World, deps: Deps) -> None:
        self.world = world
        self.deps = deps

    async def call(self, operation: str, body: dict[str, Any], token: str | None) -> Any:
        """Call ``rpc.billing.<operation>``; return its data (raises the remote error)."""
        return await call(
            self.world.nc,
            "billing",
            operation,
            body,
            token=token,
            client_address="198.51.100.20",
            request_id=uuid.uuid4().hex,
            timeout_s=15,
        )

    async def refused(self, operation: str, body: dict[str, Any], token: str | None) -> DomainError:
        """Call an operation that must fail; return the error reply it got."""
        with pytest.raises(DomainError) as caught:
            await self.call(operation, body, token)
        return caught.value


@dataclass
class Team:
    """A project created through auth with two budget codes (billing's view of each as a
    ``Tenant``), its people's tokens, and another project's PI."""

    a: Tenant
    b: Tenant
    pi: str
    member: str
    other_pi: str
    other_project_id: UUID
    finance: str
    admin: str
    admin_id: UUID


@pytest.fixture
async def billing(
    world: World, clean_billing: Servers, auth: AuthHarness
) -> AsyncIterator[Billing]:
    """Billing running beside the auth harness, with auth's signing keys loaded."""
    async with running_billing(clean_billing) as (app, deps):
        await asyncio.wait_for(app.keys.ready.wait(), 10)
        yield Billing(world, deps)


async def make_team(auth: AuthHarness, world: World, real: Servers) -> Team:
    """People, a project with a member and two budget codes, all through auth; return once
    billing has learnt them from auth's events."""
    admin = await auth.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    pi_id, pi_email = await auth.user("pi", admin)
    member_id, member_email = await auth.user("member", admin)
    other_id, other_email = await auth.user("pi", admin)
    _, finance_email = await auth.user("finance", admin)
    name = f"queries-{tag()}"
    project = await auth.call("projects.create", {"name": name, "pi_user_id": pi_id}, token=admin)
    await auth.call(
        "projects.add_member",
        {"project_id": project["id"], "user_id": member_id, "role": "member"},
        token=admin,
    )
    other = await auth.call(
        "projects.create", {"name": f"other-{tag()}", "pi_user_id": other_id}, token=admin
    )
    today = utc_now().date()
    codes = []
    for prefix, funding, thresholds in (
        ("A", FUNDING_A, THRESHOLDS_A),
        ("B", FUNDING_B, (Decimal(50), Decimal(100))),
    ):
        created = await auth.call(
            "budget_codes.create",
            {
                "project_id": project["id"],
                "code": f"{prefix}-{tag()}",
                "name": f"grant {prefix}",
                "funding_amount": str(funding),
                "currency": "EUR",
                "valid_from": str(today - timedelta(days=90)),
                "valid_to": str(today + timedelta(days=365)),
                "soft_thresholds_percent": [str(t) for t in thresholds],
            },
            token=admin,
        )
        codes.append(created)
    project_id = UUID(project["id"])
    for sql, ident in (
        ("SELECT id FROM billing.account WHERE id = :i", UUID(pi_id)),
        ("SELECT id FROM billing.project WHERE id = :i", project_id),
        ("SELECT id FROM billing.budget WHERE id = :i", UUID(codes[0]["id"])),
        ("SELECT id FROM billing.budget WHERE id = :i", UUID(codes[1]["id"])),
    ):
        await wait_for_rows(real, sql, 1, i=ident)
    a = Tenant(
        pi_id=UUID(pi_id),
        pi_email=pi_email,
        project_id=project_id,
        project_name=name,
        budget_code_id=UUID(codes[0]["id"]),
        code=codes[0]["code"],
        tier_id=uuid.uuid4(),
    )
    b = replace(a, budget_code_id=UUID(codes[1]["id"]), code=codes[1]["code"])
    await world.rates(a, RATES, EPOCH)
    admin_me = await auth.call("me", {}, token=admin)
    return Team(
        a=a,
        b=b,
        pi=await auth.login(pi_email),
        member=await auth.login(member_email),
        other_pi=await auth.login(other_email),
        other_project_id=UUID(other["id"]),
        finance=await auth.login(finance_email),
        admin=admin,
        admin_id=UUID(admin_me["id"]),
    )


@pytest.fixture
async def team(auth: AuthHarness, world: World, billing: Billing, clean_billing: Servers) -> Team:
    """A fresh team for one test (billing is running)."""
    return await make_team(auth, world, clean_billing)


# The independent calculation --------------------------------------------------------------


def priced(u: UsageRecorded) -> dict[Key, tuple[Decimal, Decimal]]:
    """Quantity and unrounded amount per resource of one usage hour, from the raw usage."""
    storage_gib_s = u.running_seconds * DISK_GIB
    parts = {
        ("vcpu", ""): (u.vcpu_seconds / 3600, u.vcpu_seconds * RATES.vcpu / 3600),
        ("memory", ""): (u.memory_gib_seconds / 3600, u.memory_gib_seconds * RATES.memory / 3600),
        ("storage", ""): (storage_gib_s / MONTH_S, storage_gib_s * RATES.storage / MONTH_S),
    }
    for model, seconds in u.gpu_seconds.items():
        parts[("gpu", model)] = (seconds / 3600, seconds * RATES.gpu[model] / 3600)
    return parts


def summed(usage: Iterable[UsageRecorded]) -> dict[Key, tuple[Decimal, Decimal]]:
    """Quantity and amount per resource over many hours (unrounded)."""
    sums: dict[Key, tuple[Decimal, Decimal]] = {}
    for u in usage:
        for key, (q, a) in priced(u).items():
            q0, a0 = sums.get(key, (Decimal(0), Decimal(0)))
            sums[key] = (q0 + q, a0 + a)
    return sums


def total_of(usage: Iterable[UsageRecorded]) -> Decimal:
    """What hours of usage cost, unrounded."""
    return sum((a for _, a in summed(usage).values()), Decimal(0))


def per_day(usage: Iterable[UsageRecorded]) -> dict[date, Decimal]:
    """What each UTC day of usage cost."""
    days: dict[date, Decimal] = defaultdict(Decimal)
    for u in usage:
        days[u.hour_start.date()] += total_of([u])
    return dict(days)


def invoice_lines(
    usage: list[UsageRecorded],
) -> dict[tuple[UUID, str, str], tuple[Decimal, Decimal]]:
    """An invoice's lines from raw usage: per instance and resource, the amount rounded
    half-up to the cent (lines of nothing left out)."""
    lines = {}
    for instance_id in {u.instance_id for u in usage}:
        mine = [u for u in usage if u.instance_id == instance_id]
        for (resource, model), (q, a) in summed(mine).items():
            if q or a:
                lines[(instance_id, resource, model)] = (q, a.quantize(CENT, ROUND_HALF_UP))
    return lines


def resources_of(report: dict[str, Any]) -> dict[Key, tuple[Decimal, Decimal]]:
    """A costs report's resources as (quantity, amount) per resource, zero ones left out."""
    return {
        (r["resource"], r["model"]): (Decimal(r["quantity"]), Decimal(r["amount"]))
        for r in report["resources"]
        if Decimal(r["quantity"]) or Decimal(r["amount"])
    }


def days_of(report: dict[str, Any]) -> dict[date, Decimal]:
    """A costs report's per-day series."""
    return {date.fromisoformat(d["day"]): Decimal(d["amount"]) for d in report["days"]}


async def charges(real: Servers, project_id: UUID, count: int) -> None:
    """Wait until billing has rated ``count`` ledger entries of a project."""
    await wait_for_rows(
        real, "SELECT id FROM billing.charge WHERE project_id = :p", count, p=project_id
    )


# Tests ------------------------------------------------------------------------------------


async def test_costs_of_an_instance_a_project_and_a_budget_code_equal_the_raw_usage(
    billing: Billing, team: Team, world: World, clean_billing: Servers
) -> None:
    day = past_day(30)
    since, until = hour(day, 20), hour(day + timedelta(days=2))
    gpu_vm = await world.instance(team.a, vcpus=4, disk_gib=DISK_GIB, held=Decimal(0))
    small_vm = await world.instance(team.a, disk_gib=DISK_GIB, held=Decimal(0))
    b_vm = await world.instance(team.b, disk_gib=DISK_GIB, held=Decimal(0))
    stranger = await world.tenant(rates=RATES)
    stranger_vm = await world.instance(stranger, disk_gib=DISK_GIB, held=Decimal(0))
    inside: list[UsageRecorded] = []
    for h in range(20, 24):
        inside.append(
            await world.usage(
                team.a, gpu_vm, hour(day, h), vcpus=4, memory_gib=Decimal(8), gpus={"A100": 1}
            )
        )
    for h, seconds in ((1, 1800), (2, 2700)):
        inside.append(
            await world.usage(
                team.a, small_vm, hour(day + timedelta(days=1), h), seconds=Decimal(seconds)
            )
        )
    inside.append(await world.usage(team.b, b_vm, hour(day + timedelta(days=1), 5)))
    # outside the window: the hour before it, the hour it ends at, another project
    await world.usage(team.a, gpu_vm, hour(day, 19), vcpus=4, gpus={"A100": 1})
    await world.usage(team.a, small_vm, until)
    await world.usage(stranger, stranger_vm, hour(day, 21))
    await charges(clean_billing, team.a.project_id, len(inside) + 2)
    await wait_for_rows(clean_billing, "SELECT id FROM billing.charge", len(inside) + 3)

    async def costs(of: str, ident: UUID, start: datetime = since, end: datetime = until) -> Any:
        body = {"of": of, "id": str(ident), "since": start.isoformat(), "until": end.isoformat()}
        return await billing.call("costs.get", body, team.pi)

    cases = {
        ("instance", gpu_vm): [u for u in inside if u.instance_id == gpu_vm],
        ("instance", small_vm): [u for u in inside if u.instance_id == small_vm],
        ("project", team.a.project_id): inside,
        ("budget_code", team.a.budget_code_id): [
            u for u in inside if u.budget_code_id == team.a.budget_code_id
        ],
        ("budget_code", team.b.budget_code_id): [
            u for u in inside if u.budget_code_id == team.b.budget_code_id
        ],
    }
    for (of, ident), usage in cases.items():
        report = await costs(of, ident)
        assert report["of"] == of
        assert report["id"] == str(ident)
        assert report["project_id"] == str(team.a.project_id)
        assert report["currency"] == "EUR"
        assert Decimal(report["total"]) == total_of(usage), (of, ident)
        assert resources_of(report) == summed(usage), (of, ident)
        assert days_of(report) == per_day(usage), (of, ident)
        assert sum(days_of(report).values(), Decimal(0)) == Decimal(report["total"])
    project = await costs("project", team.a.project_id)
    assert set(resources_of(project)) == {
        ("vcpu", ""), ("memory", ""), ("storage", ""), ("gpu", "A100")
    }  # fmt: skip
    assert [d["day"] for d in project["days"]] == [str(day), str(day + timedelta(days=1))]

    quiet = await costs("project", team.a.project_id, hour(day - timedelta(days=5)), hour(day))
    assert Decimal(quiet["total"]) == 0
    assert quiet["days"] == []
    assert all(Decimal(r["amount"]) == 0 for r in quiet["resources"])
    assert quiet["currency"] is None


async def test_budgets_show_funding_charges_holds_thresholds_and_when_the_money_runs_out(
    billing: Billing, team: Team, world: World, clean_billing: Servers
) -> None:
    old_day, recent_day = past_day(30), past_day(1)
    old_vm = await world.instance(team.a, vcpus=8, disk_gib=DISK_GIB, held=Decimal(0))
    recent_vm = await world.instance(team.a, vcpus=8, disk_gib=DISK_GIB, held=Decimal(0))
    await world.instance(team.a, disk_gib=DISK_GIB, held=Decimal("3.00"))  # idle: only holds
    old = [
        await world.usage(
            team.a, old_vm, hour(old_day, h), vcpus=8, memory_gib=Decimal(16), gpus={"A100": 1}
        )
        for h in range(3)
    ]
    recent = [
        await world.usage(team.a, recent_vm, hour(recent_day, h), vcpus=8, memory_gib=Decimal(16))
        for h in range(4)
    ]
    await charges(clean_billing, team.a.project_id, len(old) + len(recent))
    await wait_for_rows(
        clean_billing,
        "SELECT id FROM billing.instance WHERE project_id = :p",
        3,
        p=team.a.project_id,
    )

    listed = await billing.call("budgets.list", {"project_id": str(team.a.project_id)}, team.pi)
    one = await billing.call("budgets.get", {"budget_code_id": str(team.a.budget_code_id)}, team.pi)
    today = utc_now().date()

    charged = total_of(old + recent)
    burn = total_of(recent) / 7  # the forecast window is 7 days; only recent hours are in it
    spent = charged * 100 / FUNDING_A
    assert Decimal(10) < spent < Decimal(80), "the scenario crosses two of three thresholds"
    budgets = {b["budget_code_id"]: b for b in listed["budgets"]}
    assert [b["code"] for b in listed["budgets"]] == [team.a.code, team.b.code]
    a = budgets[str(team.a.budget_code_id)]
    assert a == one
    assert a["project_id"] == str(team.a.project_id)
    assert a["state"] == "open"
    assert Decimal(a["funding"]["amount"]) == FUNDING_A
    assert a["funding"]["currency"] == "EUR"
    assert Decimal(a["charged"]["amount"]) == charged.quantize(CENT)
    assert Decimal(a["held"]["amount"]) == Decimal("3.00")
    assert Decimal(a["available"]["amount"]) == (FUNDING_A - charged - 3).quantize(CENT)
    assert Decimal(a["spent_percent"]) == spent.quantize(CENT)
    assert Decimal(a["burn_per_day"]["amount"]) == burn.quantize(CENT)
    days_left = ((FUNDING_A - charged) / burn).to_integral_value(rounding=ROUND_FLOOR)
    assert a["runs_out_on"] == str(today + timedelta(days=int(days_left)))
    assert [Decimal(t) for t in a["thresholds_percent"]] == list(THRESHOLDS_A)
    assert [Decimal(t) for t in a["thresholds_crossed"]] == [t for t in THRESHOLDS_A if t <= spent]

    b = budgets[str(team.b.budget_code_id)]
    assert Decimal(b["funding"]["amount"]) == FUNDING_B
    assert Decimal(b["charged"]["amount"]) == 0
    assert Decimal(b["held"]["amount"]) == 0
    assert Decimal(b["available"]["amount"]) == FUNDING_B
    assert Decimal(b["spent_percent"]) == 0
    assert b["runs_out_on"] is None
    assert b["thresholds_crossed"] == []

    everyone = await billing.call("budgets.list", {}, team.finance)
    assert {str(team.a.budget_code_id), str(team.b.budget_code_id)} <= {
        x["budget_code_id"] for x in everyone["budgets"]
    }


async def test_invoices_documents_export_and_billing_runs(
    billing: Billing, team: Team, world: World, clean_billing: Servers
) -> None:
    day = past_day(40)
    start, end = hour(day), hour(day + timedelta(days=1))
    period = {"period_start": start.isoformat(), "period_end": end.isoformat()}
    gpu_vm = await world.instance(team.a, vcpus=4, disk_gib=DISK_GIB, held=Decimal(0))
    small_vm = await world.instance(team.a, disk_gib=DISK_GIB, held=Decimal(0))
    b_vm = await world.instance(team.b, disk_gib=DISK_GIB, held=Decimal(0))
    stranger = await world.tenant(rates=RATES)
    stranger_vm = await world.instance(stranger, disk_gib=DISK_GIB, held=Decimal(0))
    sent: dict[UUID, list[UsageRecorded]] = defaultdict(list)
    for tenant, vm, h, seconds, gpus in (
        (team.a, gpu_vm, 2, 3600, {"A100": 1}),
        (team.a, gpu_vm, 3, 900, {"A100": 1}),
        (team.a, small_vm, 5, 2700, None),
        (team.a, small_vm, 6, 1800, None),
        (team.b, b_vm, 7, 3600, None),
        (stranger, stranger_vm, 8, 3600, None),
    ):
        sent[tenant.budget_code_id].append(
            await world.usage(tenant, vm, hour(day, h), seconds=Decimal(seconds), gpus=gpus)
        )
    await wait_for_rows(clean_billing, "SELECT id FROM billing.charge", 6)

    now = utc_now().replace(minute=0, second=0, microsecond=0)
    open_period = {
        "period_start": (now - timedelta(days=1)).isoformat(),
        "period_end": (now + timedelta(hours=1)).isoformat(),
    }
    still_open = await billing.refused("runs.start", open_period, team.admin)
    assert (still_open.status, still_open.code) == (422, "period_open")
    assert "still open" in still_open.message

    first = await billing.call("runs.start", period, team.admin)
    again = await billing.call("runs.start", period, team.admin)
    assert (first["issued_now"], first["invoices"], first["state"]) == (3, 3, "completed")
    assert (again["issued_now"], again["invoices"], again["state"]) == (0, 3, "completed")
    assert again["run_id"] == first["run_id"]
    assert first["started_by"] == f"user:{team.admin_id}"
    runs = await billing.call("runs.list", {}, team.finance)
    assert [(r["run_id"], r["invoices"]) for r in runs["runs"]] == [(first["run_id"], 3)], (
        "the open period stored no run"
    )
    assert "issued_now" not in runs["runs"][0], "only the request that issued knows"
    assert runs["runs"][0]["period_start"][:19] == start.isoformat()[:19]

    mine = await billing.call("invoices.list", {"project_id": str(team.a.project_id)}, team.pi)
    assert {i["budget_code_id"] for i in mine["invoices"]} == {
        str(team.a.budget_code_id), str(team.b.budget_code_id)
    }  # fmt: skip
    numbers = [i["number"] for i in mine["invoices"]]
    assert numbers == sorted(numbers, reverse=True), "newest first"
    of_b = await billing.call(
        "invoices.list", {"budget_code_id": str(team.b.budget_code_id)}, team.pi
    )
    assert [i["budget_code_id"] for i in of_b["invoices"]] == [str(team.b.budget_code_id)]
    every = await billing.call("invoices.list", {}, team.finance)
    assert len(every["invoices"]) == 3
    assert every["next_cursor"] is None
    paged, cursor = [], None
    for _ in range(3):
        page = await billing.call(
            "invoices.list", {"limit": 2, **({"after": cursor} if cursor else {})}, team.finance
        )
        paged += page["invoices"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [i["number"] for i in paged] == [i["number"] for i in every["invoices"]]
    bad = await billing.refused("invoices.list", {"after": "x1"}, team.finance)
    assert (bad.status, bad.field) == (422, "after")

    line_count = 0
    lines_by_number: dict[str, dict[tuple[UUID, str, str], Decimal]] = {}
    for summary in every["invoices"]:
        code_id = UUID(summary["budget_code_id"])
        reader = team.finance if code_id == stranger.budget_code_id else team.pi
        detail = await billing.call("invoices.get", {"invoice_id": summary["invoice_id"]}, reader)
        expected = invoice_lines(sent[code_id])
        got = {
            (UUID(x["instance_id"]), x["resource"], x["model"]): (
                Decimal(x["quantity"]),
                Decimal(x["amount"]),
            )
            for x in detail["lines"]
        }
        assert got == expected
        assert {x["kind"] for x in detail["lines"]} == {"usage"}
        assert sum((Decimal(x["amount"]) for x in detail["lines"]), Decimal(0)) == Decimal(
            detail["total"]
        )
        assert Decimal(detail["total"]) == sum((a for _, a in expected.values()), Decimal(0))
        assert Decimal(detail["subtotal"]) == Decimal(detail["total"])
        assert Decimal(detail["adjustments"]) == 0
        assert detail["period_start"][:19] == start.isoformat()[:19]
        line_count += len(detail["lines"])
        lines_by_number[detail["number"]] = {k: a for k, (_, a) in got.items()}
        if code_id == team.a.budget_code_id:
            assert detail["project_name"] == team.a.project_name
            assert detail["budget_code"] == team.a.code

    invoice_a = next(
        i for i in mine["invoices"] if i["budget_code_id"] == str(team.a.budget_code_id)
    )
    ref = {"invoice_id": invoice_a["invoice_id"]}
    pdf = await billing.call("invoices.pdf", ref, team.pi)
    assert (pdf["media_type"], pdf["encoding"]) == ("application/pdf", "base64")
    assert pdf["filename"] == f"{invoice_a['number']}.pdf"
    assert base64.b64decode(pdf["content"]).startswith(b"%PDF-")
    sheet = await billing.call("invoices.csv", ref, team.pi)
    assert (sheet["media_type"], sheet["encoding"]) == ("text/csv", "utf-8")
    rows = list(csv.DictReader(io.StringIO(sheet["content"])))
    assert {
        (UUID(r["instance_id"]), r["resource"], r["model"]): Decimal(r["amount"]) for r in rows
    } == (lines_by_number[invoice_a["number"]])
    assert {r["invoice_number"] for r in rows} == {invoice_a["number"]}

    export = await billing.call("export.get", period, team.finance)
    assert export["media_type"] == "text/csv"
    exported = list(csv.DictReader(io.StringIO(export["content"])))
    assert len(exported) == line_count, "one row per invoice line across invoices"
    for number, lines in lines_by_number.items():
        assert {
            (UUID(r["instance_id"]), r["resource"], r["model"]): Decimal(r["amount"])
            for r in exported
            if r["invoice_number"] == number
        } == lines
    assert {r["cost_centre"] for r in exported} == {team.a.code, team.b.code, stranger.code}


async def test_who_may_read_and_run_what(
    billing: Billing, team: Team, world: World, clean_billing: Servers
) -> None:
    day = past_day(35)
    vm = await world.instance(team.a, disk_gib=DISK_GIB, held=Decimal(0))
    await world.usage(team.a, vm, hour(day, 4))
    await charges(clean_billing, team.a.project_id, 1)
    period = {
        "period_start": hour(day).isoformat(),
        "period_end": hour(day + timedelta(days=1)).isoformat(),
    }
    ran = await billing.call("runs.start", period, team.admin)
    assert ran["issued_now"] == 1
    listed = await billing.call("invoices.list", {}, team.admin)
    invoice_id = listed["invoices"][0]["invoice_id"]
    window = {"since": hour(day).isoformat(), "until": hour(day + timedelta(days=1)).isoformat()}
    project = {"project_id": str(team.a.project_id)}
    readings: list[tuple[str, dict[str, Any]]] = [
        ("costs.get", {"of": "project", "id": str(team.a.project_id), **window}),
        ("costs.get", {"of": "budget_code", "id": str(team.a.budget_code_id), **window}),
        ("costs.get", {"of": "instance", "id": str(vm), **window}),
        ("budgets.list", project),
        ("budgets.get", {"budget_code_id": str(team.a.budget_code_id)}),
        ("invoices.list", project),
        ("invoices.list", {"budget_code_id": str(team.a.budget_code_id)}),
        ("invoices.get", {"invoice_id": invoice_id}),
        ("invoices.pdf", {"invoice_id": invoice_id}),
        ("invoices.csv", {"invoice_id": invoice_id}),
        ("contacts.get", project),
    ]
    for operation, body in readings:
        seen = [await billing.call(operation, body, t) for t in (team.pi, team.finance, team.admin)]
        if operation == "invoices.pdf":  # a PDF carries the moment it was rendered
            seen = [base64.b64decode(s["content"])[:5] for s in seen]
        assert seen[0], operation
        assert seen[0] == seen[1] == seen[2], f"{operation}: the PI sees what finance sees"
        outsider = await billing.refused(operation, body, team.other_pi)
        assert (outsider.status, outsider.code) == (404, "not_found"), operation
        if operation.startswith("budgets."):  # members see their project's budget status
            assert await billing.call(operation, body, team.member) == seen[0], operation
            continue
        member = await billing.refused(operation, body, team.member)
        assert (member.status, member.code) == (403, "forbidden"), operation
        anonymous = await billing.refused(operation, body, None)
        assert (anonymous.status, anonymous.code) == (401, "unauthorized"), operation
    forged = await billing.refused("budgets.list", project, team.pi[:-4] + "AAAA")
    assert forged.status == 401

    # the PI's money, to the PI, is their own project's
    pi_costs = await billing.call("costs.get", readings[0][1], team.pi)
    assert Decimal(pi_costs["total"]) == Decimal("0.11")  # 0.08 vCPU + 0.02 memory + 0.01 disk
    other_costs = {"of": "project", "id": str(team.other_project_id), **window}
    assert Decimal((await billing.call("costs.get", other_costs, team.other_pi))["total"]) == 0

    # only finance and admins see every project's money at once
    everything: list[tuple[str, dict[str, Any]]] = [
        ("invoices.list", {}),
        ("export.get", period),
        ("runs.list", {}),
        ("parked.list", {}),
    ]
    for operation, body in everything:
        for token in (team.finance, team.admin):
            assert await billing.call(operation, body, token), operation
        for token in (team.pi, team.member, team.other_pi):
            refused = await billing.refused(operation, body, token)
            assert (refused.status, refused.code) == (403, "forbidden"), operation
    # only admins start runs
    for token in (team.pi, team.member, team.finance):
        refused = await billing.refused("runs.start", period, token)
        assert (refused.status, refused.code) == (403, "forbidden")
    refused = await billing.refused("runs.start", period, None)
    assert refused.status == 401
    runs = await billing.call("runs.list", {}, team.finance)
    assert [r["invoices"] for r in runs["runs"]] == [1]


async def test_lists_without_a_project_show_the_callers_projects(
    billing: Billing, team: Team, clean_billing: Servers
) -> None:
    ours = {str(team.a.budget_code_id), str(team.b.budget_code_id)}
    for token in (team.pi, team.member):
        budgets = await billing.call("budgets.list", {}, token)
        assert {b["budget_code_id"] for b in budgets["budgets"]} == ours
    theirs = await billing.call("budgets.list", {}, team.other_pi)
    assert theirs["budgets"] == [], "another project's PI sees none of them"
    everyone = await billing.call("budgets.list", {}, team.finance)
    assert ours <= {b["budget_code_id"] for b in everyone["budgets"]}

    url = f"https://hooks.example.org/{tag()}"
    mine = await billing.call(
        "webhooks.create", {"project_id": str(team.a.project_id), "url": url}, team.pi
    )
    await billing.call("webhooks.create", {"url": url}, team.admin)  # every project's
    assert [h["id"] for h in (await billing.call("webhooks.list", {}, team.pi))["webhooks"]] == [
        mine["id"]
    ]
    for token in (team.member, team.other_pi, team.finance):
        assert (await billing.call("webhooks.list", {}, token))["webhooks"] == []
    assert len((await billing.call("webhooks.list", {}, team.admin))["webhooks"]) == 2


async def test_webhooks_and_contacts_keep_only_what_is_valid(
    billing: Billing, team: Team, clean_billing: Servers
) -> None:
    project = str(team.a.project_id)
    url = f"https://hooks.example.org/{tag()}"
    created = await billing.call("webhooks.create", {"project_id": project, "url": url}, team.pi)
    assert created["secret"].startswith("whsec_")
    assert len(created["secret"]) > 20
    assert created["project_id"] == project
    assert created["event_types"] == ["invoice.issued"]
    listed = await billing.call("webhooks.list", {"project_id": project}, team.pi)
    assert [(h["id"], h["url"], h["secret"]) for h in listed["webhooks"]] == [
        (created["id"], url, None)
    ], "the secret is shown once"

    for bad_url in (
        "https://alice:s3cret@hooks.example.org/x",
        "http://alice@hooks.example.org/x",
    ):
        error = await billing.refused(
            "webhooks.create", {"project_id": project, "url": bad_url}, team.pi
        )
        assert (error.status, error.code, error.field) == (422, "invalid", "url")
        assert "user name or password" in error.message
    unknown = await billing.refused(
        "webhooks.create",
        {"project_id": project, "url": url, "event_types": ["invoice.paid"]},
        team.pi,
    )
    assert (unknown.status, unknown.field) == (422, "event_types")
    assert "unknown event type" in unknown.message
    assert "invoice.paid" in unknown.message
    member = await billing.refused(
        "webhooks.create", {"project_id": project, "url": url}, team.member
    )
    assert member.status == 403
    outsider = await billing.refused(
        "webhooks.create", {"project_id": project, "url": url}, team.other_pi
    )
    assert outsider.status == 404
    stored = await query(clean_billing, "SELECT id FROM billing.webhook")
    assert [str(r.id) for r in stored] == [created["id"]], "refused ones are not stored"

    contacts = {"project_id": project, "emails": ["treasurer@uni.example", "grants@uni.example"]}
    kept = await billing.call("contacts.set", contacts, team.pi)
    assert kept["emails"] == contacts["emails"]
    assert kept["pi_email"] == team.a.pi_email
    for malformed in ("not-an-address", "a@localhost", "two words@uni.example"):
        error = await billing.refused(
            "contacts.set", {"project_id": project, "emails": [malformed]}, team.pi
        )
        assert (error.status, error.code) == (422, "invalid"), malformed
        assert "not an email address" in error.message
    refused = await billing.refused(
        "contacts.set", {"project_id": project, "emails": []}, team.member
    )
    assert refused.status == 403
    after = await billing.call("contacts.get", {"project_id": project}, team.pi)
    assert after == kept, "a refused change changes nothing"


async def test_parked_usage_of_an_unknown_instance_is_listed_for_finance(
    billing: Billing, auth: AuthHarness, world: World, clean_billing: Servers
) -> None:
    admin = await auth.login(ADMIN_EMAIL, ADMIN_PASSWORD)
    _, finance_email = await auth.user("finance", admin)
    finance = await auth.login(finance_email)
    tenant = await world.tenant(rates=RATES)
    ghost = uuid.uuid4()  # metering saw it; the inventory's InstanceRequested never came
    used = await world.usage(tenant, ghost, hour(past_day(20), 9))
    await wait_for_rows(
        clean_billing, "SELECT * FROM billing.usage WHERE instance_id = :i", 1, i=ghost
    )
    parked = await billing.call("parked.list", {}, finance)
    mine = [h for h in parked["hours"] if h["instance_id"] == str(ghost)]
    assert len(mine) == 1
    assert mine[0]["reason_code"] == "unknown_instance"
    assert "not known" in mine[0]["reason"]
    assert mine[0]["hour_start"][:19] == used.hour_start.isoformat()[:19]
    assert mine[0]["budget_code_id"] == str(tenant.budget_code_id)
    assert await query(clean_billing, "SELECT id FROM billing.charge") == []
