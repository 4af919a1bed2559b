"""Projects (labs), their members, and budget codes (grants), end to end through the service.

What the issue asks for: projects created by a PI or an admin; members with a project role (pi,
member); a person may belong to several projects; grants with code, name, funding and currency,
validity dates, soft thresholds (default 50/80/100), hard-limit behaviour and status, updated
against the version they were read at; bad input refused with a clear message and nothing
half-written; and the events other services build their projections from, on the AUTH stream,
with the full state.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import date
from decimal import Decimal
from typing import Any

import asyncpg
import jwt
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from compgrid_events import Event
from compgrid_events.auth import (
    BudgetCodeCreated,
    BudgetCodeStatus,
    BudgetCodeUpdated,
    HardLimitBehaviour,
    MembershipChanged,
    ProjectCreated,
    ProjectRole,
)
from compgrid_events.registry import registry
from tests.auth.integration.conftest import AuthHarness

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis]


# --------------------------------------------------------------------------- helpers


class Tap:
    """A JetStream consumer on the AUTH stream, created before the test acts (new messages
    only), that keeps the events mentioning ids the test created."""

    def __init__(self, auth: AuthHarness) -> None:
        self._auth = auth
        self._sub: Any = None
        self.seen: list[Event] = []

    async def start(self) -> None:
        self._sub = await self._auth.nc.jetstream().pull_subscribe(
            "auth.>",
            stream="AUTH",
            config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW, inactive_threshold=60),
        )

    async def stop(self) -> None:
        await self._sub.unsubscribe()

    async def _drain(self, wait_s: float) -> None:
        try:
            batch = await self._sub.fetch(100, timeout=wait_s)
        except TimeoutError:
            return
        for msg in batch:
            self.seen.append(registry.decode(msg.subject, msg.data))
            await msg.ack()

    def about(self, *ids: object) -> list[Event]:
        wanted = {str(i) for i in ids}
        return [e for e in self.seen if wanted & {str(v) for v in e.model_dump().values()}]

    async def wait(
        self, until: Callable[[list[Event]], bool], *ids: object, within_s: float = 15
    ) -> list[Event]:
        """Read until ``until(events about ids)`` holds (or fail after ``within_s``)."""
        deadline = asyncio.get_running_loop().time() + within_s
        while not until(self.about(*ids)):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"events never arrived: {self.about(*ids)}")
            await self._drain(0.5)
        return self.about(*ids)

    async def settle(self, *ids: object, quiet: float = 1.5) -> list[Event]:
        """Read whatever else arrives for ``quiet`` seconds (to see nothing extra was sent)."""
        deadline = asyncio.get_running_loop().time() + quiet
        while asyncio.get_running_loop().time() < deadline:
            await self._drain(0.3)
        return self.about(*ids)


@pytest.fixture
async def tap(auth: AuthHarness) -> AsyncIterator[Tap]:
    found = Tap(auth)
    await found.start()
    yield found
    await found.stop()


def of(kind: type[Event], events: list[Event]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def grant(project_id: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "project_id": project_id,
        "code": unique("PB"),
        "name": "Sequencing grant",
        "funding_amount": "25000.00",
        "currency": "EUR",
        "valid_from": "2026-01-01",
        "valid_to": "2027-12-31",
    }
    body.update(overrides)
    return body


async def a_pi(auth: AuthHarness) -> tuple[str, str]:
    """A fresh PI: (user id, token)."""
    user_id, email = await auth.user("pi")
    return user_id, await auth.login(email)


async def a_project(auth: AuthHarness, token: str, **extra: Any) -> dict[str, Any]:
    project: dict[str, Any] = await auth.call(
        "projects.create", {"name": f"Lab {uuid.uuid4().hex}", **extra}, token=token
    )
    return project


async def written(db: asyncpg.Connection) -> tuple[Any, Any]:
    """The newest audit entry and outbox row: any state change moves at least one of them."""
    return (
        await db.fetchval("SELECT max(id) FROM auth.audit_entry"),
        await db.fetchval("SELECT max(id) FROM auth.outbox"),
    )


# --------------------------------------------------------------------------- projects


async def test_a_pi_creates_a_project_and_leads_it(auth: AuthHarness, tap: Tap) -> None:
    pi_id, pi = await a_pi(auth)
    name = f"Genomics {uuid.uuid4().hex}"
    project = await auth.call(
        "projects.create",
        {
            "name": name,
            "requires_approval_above": {"amount": "300.00", "currency": "CHF"},
            "default_lease_hours": 72,
        },
        token=pi,
    )
    assert project["name"] == name
    assert project["pi_user_id"] == pi_id
    assert project["members"] == {pi_id: "pi"}
    threshold = project["requires_approval_above"]
    assert (Decimal(threshold["amount"]), threshold["currency"]) == (Decimal("300.00"), "CHF")
    assert project["default_lease_hours"] == 72

    assert await auth.call("projects.get", {"project_id": project["id"]}, token=pi) == project
    listed = await auth.call("projects.list", {}, token=pi)
    assert [p["id"] for p in listed["items"]] == [project["id"]]

    events = await tap.wait(
        lambda es: bool(of(ProjectCreated, es)) and bool(of(MembershipChanged, es)),
        project["id"],
    )
    (created,) = of(ProjectCreated, events)
    assert str(created.project_id) == project["id"]
    assert created.name == name
    assert str(created.pi_user_id) == pi_id
    assert created.requires_approval_above is not None
    assert created.requires_approval_above.amount == Decimal("300.00")
    assert created.requires_approval_above.currency == "CHF"
    assert created.default_lease_hours == 72
    (joined,) = of(MembershipChanged, events)
    assert (str(joined.user_id), joined.role) == (pi_id, ProjectRole.PI)


async def test_an_admin_creates_a_project_for_a_pi(auth: AuthHarness, tap: Tap) -> None:
    admin = auth.tokens["admin"]
    admin_id = str((await auth.call("me", token=admin))["id"])
    pi_id, pi = await a_pi(auth)
    project = await auth.call(
        "projects.create",
        {"name": f"Admin made {uuid.uuid4().hex}", "pi_user_id": pi_id},
        token=admin,
    )
    assert project["pi_user_id"] == pi_id
    assert project["members"] == {pi_id: "pi"}  # the admin does not become a member
    assert admin_id not in project["members"]
    assert (await auth.call("me", token=pi))["projects"] == {project["id"]: "pi"}
    # and the PI manages it right away
    code = await auth.call("budget_codes.create", grant(project["id"]), token=pi)
    assert code["project_id"] == project["id"]
    events = await tap.wait(lambda es: bool(of(ProjectCreated, es)), project["id"])
    assert str(of(ProjectCreated, events)[0].pi_user_id) == pi_id


async def test_refused_project_creations_write_nothing(
    auth: AuthHarness, db: asyncpg.Connection
) -> None:
    admin = auth.tokens["admin"]
    _, pi = await a_pi(auth)
    other_pi_id, _ = await auth.user("pi")
    member_id, member_email = await auth.user("member")
    member = await auth.login(member_email)
    disabled_pi_id, _ = await auth.user("pi")
    await auth.call("users.disable", {"user_id": disabled_pi_id}, token=admin)
    taken = await a_project(auth, pi)

    cases: list[tuple[dict[str, Any], str | None, int, str]] = [
        ({"name": unique("By member")}, member, 403, ""),
        ({"name": unique("For other"), "pi_user_id": other_pi_id}, pi, 422, "pi_user_id"),
        ({"name": unique("For member"), "pi_user_id": member_id}, admin, 422, "pi_user_id"),
        ({"name": unique("For disabled"), "pi_user_id": disabled_pi_id}, admin, 422, "pi_user_id"),
        ({"name": unique("Nobody"), "pi_user_id": str(uuid.uuid4())}, admin, 404, ""),
        ({"name": taken["name"]}, admin, 409, "name"),
        ({"name": unique("Lease"), "default_lease_hours": 0}, pi, 422, "default_lease_hours"),
        ({"name": ""}, pi, 422, "name"),
        ({"name": unique("Anonymous")}, None, 401, ""),
    ]
    for body, token, status, field in cases:
        before = await written(db)
        projects_before = await db.fetchval("SELECT count(*) FROM auth.project")
        error = await auth.refused("projects.create", body, token=token)
        assert error.status == status, (body, error.message)
        assert field in f"{error.field} {error.message}", (body, error.message)
        assert await db.fetchval("SELECT count(*) FROM auth.project") == projects_before
        assert await written(db) == before, body
    assert (
        await db.fetchval("SELECT count(*) FROM auth.project WHERE name = $1", taken["name"]) == 1
    )


async def test_sql_and_html_in_names_are_stored_verbatim(
    auth: AuthHarness, db: asyncpg.Connection, tap: Tap
) -> None:
    _, pi = await a_pi(auth)
    suffix = uuid.uuid4().hex[:8]
    project_name = f"Robert'); DROP TABLE auth.project;-- <b>lab</b> {suffix}"
    grant_name = f"<script>alert('x')</script> \" OR 1=1 -- {suffix}"
    project = await auth.call("projects.create", {"name": project_name}, token=pi)
    code = await auth.call("budget_codes.create", grant(project["id"], name=grant_name), token=pi)
    assert project["name"] == project_name
    assert code["name"] == grant_name
    got = await auth.call("projects.get", {"project_id": project["id"]}, token=pi)
    assert got["name"] == project_name
    got_code = await auth.call("budget_codes.get", {"budget_code_id": code["id"]}, token=pi)
    assert got_code["name"] == grant_name
    assert (
        await db.fetchval("SELECT name FROM auth.project WHERE id = $1", uuid.UUID(project["id"]))
        == project_name
    )
    assert (
        await db.fetchval("SELECT name FROM auth.budget_code WHERE id = $1", uuid.UUID(code["id"]))
        == grant_name
    )
    assert await db.fetchval("SELECT count(*) FROM auth.project") >= 1  # still there
    events = await tap.wait(
        lambda es: bool(of(ProjectCreated, es)) and bool(of(BudgetCodeCreated, es)),
        project["id"],
    )
    assert of(ProjectCreated, events)[0].name == project_name
    assert of(BudgetCodeCreated, events)[0].name == grant_name


# --------------------------------------------------------------------------- members


async def test_a_person_in_several_projects_sees_all_of_them(auth: AuthHarness, tap: Tap) -> None:
    person_id, person_email = await auth.user("member")
    pis = [await a_pi(auth) for _ in range(4)]
    projects = [await a_project(auth, token) for _, token in pis]
    a, b, c, d = (p["id"] for p in projects)
    codes = [
        await auth.call("budget_codes.create", grant(p["id"]), token=token)
        for p, (_, token) in zip(projects, pis, strict=True)
    ]
    for project_id, (_, token), role in (
        (a, pis[0], "member"),
        (b, pis[1], None),
        (c, pis[2], "pi"),
    ):
        body = {"project_id": project_id, "user_id": person_id}
        if role:
            body["role"] = role
        await auth.call("projects.add_member", body, token=token)

    person = await auth.login(person_email)
    expected = {a: "member", b: "member", c: "pi"}
    assert (await auth.call("me", token=person))["projects"] == expected
    claims = jwt.decode(person, options={"verify_signature": False})
    assert claims["projects"] == expected
    assert claims["sub"] == person_id

    listed = await auth.call("projects.list", {}, token=person)
    assert {p["id"] for p in listed["items"]} == {a, b, c}
    visible = await auth.call("budget_codes.list", {}, token=person)
    assert {v["id"] for v in visible} == {codes[0]["id"], codes[1]["id"], codes[2]["id"]}
    refused = await auth.refused("projects.get", {"project_id": d}, token=person)
    assert refused.status == 404

    # leaving one project shows at once in `me`, and in the next token
    await auth.call(
        "projects.remove_member", {"project_id": b, "user_id": person_id}, token=pis[1][1]
    )
    assert (await auth.call("me", token=person))["projects"] == {a: "member", c: "pi"}
    fresh = await auth.login(person_email)
    assert jwt.decode(fresh, options={"verify_signature": False})["projects"] == {
        a: "member",
        c: "pi",
    }
    events = await tap.wait(
        lambda es: len([e for e in of(MembershipChanged, es) if str(e.user_id) == person_id]) >= 4,
        person_id,
    )
    mine = [
        (str(e.project_id), e.role)
        for e in of(MembershipChanged, events)
        if str(e.user_id) == person_id
    ]
    assert mine == [
        (a, ProjectRole.MEMBER),
        (b, ProjectRole.MEMBER),
        (c, ProjectRole.PI),
        (b, None),
    ]


async def test_project_roles_decide_what_a_member_may_do(
    auth: AuthHarness, db: asyncpg.Connection
) -> None:
    pi_id, pi = await a_pi(auth)
    project = await a_project(auth, pi)
    ref = {"project_id": project["id"]}
    person_id, person_email = await auth.user("member")
    person = await auth.login(person_email)

    await auth.call("projects.add_member", {**ref, "user_id": person_id}, token=pi)
    as_member = await auth.refused("budget_codes.create", grant(project["id"]), token=person)
    assert as_member.status == 403

    promoted = await auth.call(
        "projects.add_member", {**ref, "user_id": person_id, "role": "pi"}, token=pi
    )
    assert promoted["members"] == {pi_id: "pi", person_id: "pi"}
    code = await auth.call("budget_codes.create", grant(project["id"]), token=person)
    assert code["project_id"] == project["id"]

    demoted = await auth.call(
        "projects.add_member", {**ref, "user_id": person_id, "role": "member"}, token=pi
    )
    assert demoted["members"][person_id] == "member"
    again = await auth.refused(
        "budget_codes.update",
        {"budget_code_id": code["id"], "expected_version": 1, "name": "Nope"},
        token=person,
    )
    assert again.status == 403

    # the project's own PI can be neither demoted nor removed, and nothing changes trying
    before = await written(db)
    for operation, body in (
        ("projects.add_member", {**ref, "user_id": pi_id, "role": "member"}),
        ("projects.remove_member", {**ref, "user_id": pi_id}),
    ):
        error = await auth.refused(operation, body, token=pi)
        assert error.status == 409
        assert error.code == "pi_role_fixed"
    assert await written(db) == before
    got = await auth.call("projects.get", ref, token=pi)
    assert got["members"] == {pi_id: "pi", person_id: "member"}

    # a disabled account joins no project
    gone_id, _ = await auth.user("member")
    await auth.call("users.disable", {"user_id": gone_id}, token=auth.tokens["admin"])
    before = await written(db)
    error = await auth.refused("projects.add_member", {**ref, "user_id": gone_id}, token=pi)
    assert error.status == 409
    assert error.code == "user_disabled"
    assert await written(db) == before
    assert gone_id not in (await auth.call("projects.get", ref, token=pi))["members"]

    # removing someone who is not a member changes nothing and tells nobody
    stranger_id, _ = await auth.user("member")
    before = await written(db)
    result = await auth.call("projects.remove_member", {**ref, "user_id": stranger_id}, token=pi)
    assert result["members"] == {pi_id: "pi", person_id: "member"}
    assert await written(db) == before


# --------------------------------------------------------------------------- budget codes


async def test_a_budget_code_keeps_everything_it_was_given_and_says_so_on_the_bus(
    auth: AuthHarness, tap: Tap
) -> None:
    _, pi = await a_pi(auth)
    project = await a_project(auth, pi)
    defaults = await auth.call("budget_codes.create", grant(project["id"]), token=pi)
    assert [Decimal(t) for t in defaults["soft_thresholds_percent"]] == [50, 80, 100]
    assert defaults["hard_limit_behaviour"] == "stop_instances"
    assert defaults["status"] == "active"
    assert defaults["version"] == 1

    body = grant(
        project["id"],
        name="Imaging grant",
        funding_amount="1234567.8912",
        currency="USD",
        valid_from="2026-03-01",
        valid_to="2026-03-01",  # a one-day grant is valid
        soft_thresholds_percent=["25", "75.5", "90", "120"],
        hard_limit_behaviour="block_new",
    )
    code = await auth.call("budget_codes.create", body, token=pi)
    assert code["project_id"] == project["id"]
    assert code["code"] == body["code"]
    assert code["name"] == "Imaging grant"
    assert code["funding"]["currency"] == "USD"
    assert Decimal(code["funding"]["amount"]) == Decimal("1234567.8912")
    assert (code["valid_from"], code["valid_to"]) == ("2026-03-01", "2026-03-01")
    assert [Decimal(t) for t in code["soft_thresholds_percent"]] == [
        Decimal("25"),
        Decimal("75.5"),
        Decimal("90"),
        Decimal("120"),
    ]
    assert code["hard_limit_behaviour"] == "block_new"
    assert code["status"] == "active"
    assert await auth.call("budget_codes.get", {"budget_code_id": code["id"]}, token=pi) == code
    listed = await auth.call("budget_codes.list", {"project_id": project["id"]}, token=pi)
    assert sorted(c["id"] for c in listed) == sorted([defaults["id"], code["id"]])

    events = await tap.wait(lambda es: len(of(BudgetCodeCreated, es)) >= 2, project["id"])
    by_id = {str(e.budget_code_id): e for e in of(BudgetCodeCreated, events)}
    event = by_id[code["id"]]
    assert str(event.project_id) == project["id"]
    assert event.code == code["code"]
    assert event.name == "Imaging grant"
    assert event.funding.amount == Decimal("1234567.8912")
    assert event.funding.currency == "USD"
    assert (event.valid_from, event.valid_to) == (date(2026, 3, 1), date(2026, 3, 1))
    assert event.soft_thresholds_percent == (
        Decimal("25"),
        Decimal("75.5"),
        Decimal("90"),
        Decimal("120"),
    )
    assert event.hard_limit_behaviour is HardLimitBehaviour.BLOCK_NEW
    assert event.status is BudgetCodeStatus.ACTIVE
    assert event.version == 1
    first = by_id[defaults["id"]]
    assert first.soft_thresholds_percent == (Decimal(50), Decimal(80), Decimal(100))
    assert first.hard_limit_behaviour is HardLimitBehaviour.STOP_INSTANCES


async def test_updates_bump_the_version_and_publish_the_whole_new_state(
    auth: AuthHarness, tap: Tap
) -> None:
    admin = auth.tokens["admin"]
    _, pi = await a_pi(auth)
    project = await a_project(auth, pi)
    code = await auth.call("budget_codes.create", grant(project["id"]), token=pi)
    ref = {"budget_code_id": code["id"]}

    second = await auth.call(
        "budget_codes.update",
        {
            **ref,
            "expected_version": 1,
            "name": "Renewed grant",
            "funding_amount": "30000",
            "valid_from": "2026-02-01",
            "valid_to": "2028-06-30",
            "soft_thresholds_percent": ["60", "90"],
            "hard_limit_behaviour": "block_new",
        },
        token=pi,
    )
    assert second["version"] == 2
    assert second["name"] == "Renewed grant"
    assert Decimal(second["funding"]["amount"]) == Decimal(30000)
    assert second["funding"]["currency"] == "EUR"  # unchanged
    assert (second["valid_from"], second["valid_to"]) == ("2026-02-01", "2028-06-30")
    assert [Decimal(t) for t in second["soft_thresholds_percent"]] == [60, 90]
    assert second["hard_limit_behaviour"] == "block_new"
    assert second["code"] == code["code"]

    third = await auth.call(
        "budget_codes.update", {**ref, "expected_version": 2, "status": "suspended"}, token=admin
    )
    assert third["version"] == 3
    assert third["status"] == "suspended"
    assert third["name"] == "Renewed grant"  # untouched fields stay
    fourth = await auth.call(
        "budget_codes.update", {**ref, "expected_version": 3, "status": "closed"}, token=pi
    )
    assert fourth["status"] == "closed"
    assert await auth.call("budget_codes.get", ref, token=pi) == fourth

    events = await tap.wait(lambda es: len(of(BudgetCodeUpdated, es)) >= 3, code["id"])
    updates = of(BudgetCodeUpdated, events)
    assert [e.version for e in updates] == [2, 3, 4]
    assert [e.status for e in updates] == [
        BudgetCodeStatus.ACTIVE,
        BudgetCodeStatus.SUSPENDED,
        BudgetCodeStatus.CLOSED,
    ]
    for event, reply in zip(updates, (second, third, fourth), strict=True):
        assert str(event.budget_code_id) == reply["id"]
        assert str(event.project_id) == project["id"]
        assert event.code == reply["code"]
        assert event.name == reply["name"]
        assert event.funding.amount == Decimal(reply["funding"]["amount"])
        assert event.funding.currency == reply["funding"]["currency"]
        assert event.valid_from.isoformat() == reply["valid_from"]
        assert event.valid_to.isoformat() == reply["valid_to"]
        assert [str(t) for t in event.soft_thresholds_percent] == [
            str(Decimal(t)) for t in reply["soft_thresholds_percent"]
        ]
        assert event.hard_limit_behaviour.value == reply["hard_limit_behaviour"]


async def test_a_stale_version_is_refused_and_changes_nothing(
    auth: AuthHarness, db: asyncpg.Connection, tap: Tap
) -> None:
    _, pi = await a_pi(auth)
    project = await a_project(auth, pi)
    code = await auth.call("budget_codes.create", grant(project["id"]), token=pi)
    ref = {"budget_code_id": code["id"]}
    current = await auth.call(
        "budget_codes.update", {**ref, "expected_version": 1, "name": "First writer"}, token=pi
    )

    for version in (1, 3):  # behind, and ahead of, the stored version 2
        before = await written(db)
        stale = await auth.refused(
            "budget_codes.update",
            {**ref, "expected_version": version, "name": "Lost update", "funding_amount": "1"},
            token=pi,
        )
        assert stale.status == 409
        assert stale.code == "version_mismatch"
        assert "version 2" in stale.message
        assert await written(db) == before
        assert await auth.call("budget_codes.get", ref, token=pi) == current

    # the next good update is version 3: the refused ones published nothing in between
    await auth.call(
        "budget_codes.update", {**ref, "expected_version": 2, "name": "Second writer"}, token=pi
    )
    await tap.wait(lambda es: len(of(BudgetCodeUpdated, es)) >= 2, code["id"])
    updates = of(BudgetCodeUpdated, await tap.settle(code["id"]))
    assert [(e.version, e.name) for e in updates] == [(2, "First writer"), (3, "Second writer")]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        pytest.param(
            {"valid_from": "2026-06-01", "valid_to": "2026-05-31"}, "valid_to", id="to-before-from"
        ),
        pytest.param({"funding_amount": "-100.00"}, "funding_amount", id="negative-amount"),
        pytest.param({"funding_amount": "0"}, "funding_amount", id="zero-amount"),
        pytest.param({"funding_amount": "abc"}, "funding_amount", id="not-a-number"),
        pytest.param({"currency": "eur"}, "currency", id="lowercase-currency"),
        pytest.param({"currency": "EURO"}, "currency", id="four-letter-currency"),
        pytest.param({"currency": "E1R"}, "currency", id="digit-currency"),
        pytest.param(
            {"soft_thresholds_percent": ["80", "50", "100"]},
            "soft_thresholds_percent",
            id="thresholds-out-of-order",
        ),
        pytest.param(
            {"soft_thresholds_percent": ["100", "80"]},
            "soft_thresholds_percent",
            id="thresholds-descending",
        ),
        pytest.param(
            {"soft_thresholds_percent": ["-10", "50"]},
            "soft_thresholds_percent",
            id="negative-threshold",
        ),
        pytest.param(
            {"hard_limit_behaviour": "shutdown"}, "hard_limit_behaviour", id="unknown-behaviour"
        ),
        pytest.param({"code": "A B"}, "code", id="code-with-space"),
        pytest.param({"name": ""}, "name", id="empty-name"),
    ],
)
async def test_bad_budget_codes_are_refused_clearly_and_write_nothing(
    auth: AuthHarness, db: asyncpg.Connection, overrides: dict[str, Any], field: str
) -> None:
    _, pi = await a_pi(auth)
    project = await a_project(auth, pi)
    body = grant(project["id"], **overrides)
    before = await written(db)
    error = await auth.refused("budget_codes.create", body, token=pi)
    assert error.status == 422, error.message
    assert error.field == field, (error.field, error.message)
    assert field in error.message
    assert await auth.call("budget_codes.list", {"project_id": project["id"]}, token=pi) == []
    assert (
        await db.fetchval(
            "SELECT count(*) FROM auth.budget_code WHERE project_id = $1",
            uuid.UUID(project["id"]),
        )
        == 0
    )
    assert await written(db) == before


async def test_a_duplicate_code_is_a_conflict_and_writes_nothing(
    auth: AuthHarness, db: asyncpg.Connection
) -> None:
    _, pi = await a_pi(auth)
    project = await a_project(auth, pi)
    first = await auth.call("budget_codes.create", grant(project["id"]), token=pi)
    _, other_pi = await a_pi(auth)
    other = await a_project(auth, other_pi)
    for project_id, token in ((project["id"], pi), (other["id"], other_pi)):
        before = await written(db)
        error = await auth.refused(
            "budget_codes.create", grant(project_id, code=first["code"], name="Copy"), token=token
        )
        assert error.status == 409
        assert error.code == "code_taken"
        assert error.field == "code"
        assert await written(db) == before
    assert (
        await db.fetchval("SELECT count(*) FROM auth.budget_code WHERE code = $1", first["code"])
        == 1
    )
    assert await auth.call("budget_codes.list", {"project_id": other["id"]}, token=other_pi) == []
    listed = await auth.call("budget_codes.list", {"project_id": project["id"]}, token=pi)
    assert listed == [first]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param({"valid_to": "2025-12-31"}, "valid_to", id="to-before-stored-from"),
        pytest.param({"valid_from": "2028-01-01"}, "valid_to", id="from-after-stored-to"),
        pytest.param({"funding_amount": "-1"}, "funding_amount", id="negative-amount"),
        pytest.param({"funding_amount": "0"}, "funding_amount", id="zero-amount"),
        pytest.param(
            {"soft_thresholds_percent": ["90", "50"]},
            "soft_thresholds_percent",
            id="thresholds-out-of-order",
        ),
        pytest.param(
            {"soft_thresholds_percent": []}, "soft_thresholds_percent", id="no-thresholds"
        ),
        pytest.param(
            {"soft_thresholds_percent": ["50", "5000"]},
            "soft_thresholds_percent",
            id="threshold-too-high",
        ),
        pytest.param({"status": "deleted"}, "status", id="unknown-status"),
        pytest.param({"currency": "USD"}, "currency", id="currency-is-not-updatable"),
        pytest.param({"code": "OTHER-CODE"}, "code", id="code-is-not-updatable"),
    ],
)
async def test_bad_updates_are_refused_and_change_nothing(
    auth: AuthHarness, db: asyncpg.Connection, change: dict[str, Any], field: str
) -> None:
    _, pi = await a_pi(auth)
    project = await a_project(auth, pi)
    code = await auth.call("budget_codes.create", grant(project["id"]), token=pi)
    ref = {"budget_code_id": code["id"]}
    before = await written(db)
    error = await auth.refused(
        "budget_codes.update", {**ref, "expected_version": 1, **change}, token=pi
    )
    assert error.status == 422, error.message
    assert field in f"{error.field} {error.message}", (error.field, error.message)
    assert await written(db) == before
    assert await auth.call("budget_codes.get", ref, token=pi) == code
