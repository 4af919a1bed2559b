"""Who may do what in auth: every actor against every action, on a fresh project per cell.

Expected outcomes come from DESIGN.md's roles table and the issue text:

* ``admin``: everything.
* ``pi`` (the project's own PI): create projects; add, remove and invite members of their own
  project; create, update and read its budget codes.
* a PI of *another* project: may create projects of their own, nothing on this one.
* ``member`` of the project: reads its budget codes, nothing else.
* ``finance``: reads every project's budget codes; "nothing else" (so no audit log, no users).
* an unrelated member (in some other project): nothing here.
* anonymous (no token): 401 everywhere.

Refusal statuses: 401 without a token; 403 when the caller may see the project (or the action is
platform-wide) but the role does not allow it; 404 for callers outside the project on
project-scoped actions: DESIGN.md says nobody sees another project's data unless their role
allows it, and the service deliberately answers "not found" so outsiders learn nothing about
other tenants (``domain/access.py``). Every refused cell also checks that nothing changed: the
project, its budget codes, the target account, the would-be new account or project, the
platform settings, the signing keys, the audit log and the outbox.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from tests.auth.integration.conftest import PASSWORD, AuthHarness

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis]

ACTORS = (
    "admin",
    "own_pi",
    "other_pi",
    "project_member",
    "finance",
    "unrelated_member",
    "anonymous",
)
OUTSIDERS = {"other_pi", "unrelated_member"}

ACTIONS = (
    "users.create",
    "users.list",
    "users.disable",
    "settings.update",
    "projects.create",
    "projects.add_member",
    "projects.remove_member",
    "projects.invite",
    "budget_codes.create",
    "budget_codes.update",
    "budget_codes.list",
    "budget_codes.get",
    "audit.list",
    "keys.rotate",
)

PROJECT_SCOPED = {
    "projects.add_member",
    "projects.remove_member",
    "projects.invite",
    "budget_codes.create",
    "budget_codes.update",
    "budget_codes.list",
    "budget_codes.get",
}

ALLOWED: dict[str, set[str]] = {
    "users.create": {"admin"},
    "users.list": {"admin"},
    "users.disable": {"admin"},
    "settings.update": {"admin"},
    "audit.list": {"admin"},
    "keys.rotate": {"admin"},
    "projects.create": {"admin", "own_pi", "other_pi"},
    "projects.add_member": {"admin", "own_pi"},
    "projects.remove_member": {"admin", "own_pi"},
    "projects.invite": {"admin", "own_pi"},
    "budget_codes.create": {"admin", "own_pi"},
    "budget_codes.update": {"admin", "own_pi"},
    "budget_codes.list": {"admin", "own_pi", "project_member", "finance"},
    "budget_codes.get": {"admin", "own_pi", "project_member", "finance"},
}


def expected(actor: str, action: str) -> int | None:
    """None when the call must succeed, else the status of the refusal."""
    if actor in ALLOWED[action]:
        return None
    if actor == "anonymous":
        return 401
    if action in PROJECT_SCOPED and actor in OUTSIDERS:
        return 404
    return 403


@dataclass
class Actor:
    user_id: str
    token: str | None


@dataclass
class World:
    """A fresh project of ``own_pi`` with ``project_member`` in it, one grant, a target account
    (inside the project for remove_member), and names nobody has used yet."""

    project_id: str
    code: dict[str, Any]
    target_id: str
    target_email: str
    fresh_email: str
    fresh_project: str
    fresh_code: str
    self_registration: bool


@pytest.fixture(scope="module")
async def actors(auth: AuthHarness) -> dict[str, Actor]:
    admin = auth.tokens["admin"]
    found = {"admin": Actor(str((await auth.call("me", token=admin))["id"]), admin)}
    emails: dict[str, str] = {}
    for name, role in (
        ("own_pi", "pi"),
        ("other_pi", "pi"),
        ("project_member", "member"),
        ("finance", "finance"),
        ("unrelated_member", "member"),
    ):
        user_id, emails[name] = await auth.user(role)
        found[name] = Actor(user_id, None)
    # the other PI leads a lab of their own, and the unrelated member belongs to it
    other_pi = await auth.login(emails["other_pi"])
    other = await auth.call(
        "projects.create", {"name": f"Elsewhere {uuid.uuid4().hex}"}, token=other_pi
    )
    await auth.call(
        "projects.add_member",
        {"project_id": other["id"], "user_id": found["unrelated_member"].user_id},
        token=other_pi,
    )
    for name, email in emails.items():
        found[name].token = await auth.login(email)
    found["anonymous"] = Actor("", None)
    return found


def grant_body(project_id: str, code: str) -> dict[str, Any]:
    return {
        "project_id": project_id,
        "code": code,
        "name": "Matrix grant",
        "funding_amount": "500.00",
        "currency": "EUR",
        "valid_from": "2026-01-01",
        "valid_to": "2027-12-31",
    }


async def build_world(auth: AuthHarness, actors: dict[str, Actor], action: str) -> World:
    pi = actors["own_pi"].token
    project = await auth.call("projects.create", {"name": f"Matrix {uuid.uuid4().hex}"}, token=pi)
    await auth.call(
        "projects.add_member",
        {"project_id": project["id"], "user_id": actors["project_member"].user_id},
        token=pi,
    )
    target_id, target_email = await auth.user("member")
    if action == "projects.remove_member":
        await auth.call(
            "projects.add_member", {"project_id": project["id"], "user_id": target_id}, token=pi
        )
    code = await auth.call(
        "budget_codes.create", grant_body(project["id"], f"MX-{uuid.uuid4().hex[:12]}"), token=pi
    )
    settings = await auth.call("settings.get", token=auth.tokens["admin"])
    return World(
        project_id=str(project["id"]),
        code=code,
        target_id=target_id,
        target_email=target_email,
        fresh_email=f"fresh-{uuid.uuid4().hex[:12]}@example.org",
        fresh_project=f"Fresh lab {uuid.uuid4().hex}",
        fresh_code=f"FR-{uuid.uuid4().hex[:12]}",
        self_registration=bool(settings["self_registration"]),
    )


def body_for(action: str, w: World) -> dict[str, Any]:
    bodies: dict[str, dict[str, Any]] = {
        "users.create": {
            "email": w.fresh_email,
            "display_name": "Fresh person",
            "password": PASSWORD,
            "roles": ["member"],
        },
        "users.list": {"query": w.target_email},
        "users.disable": {"user_id": w.target_id, "reason": "matrix"},
        # the opposite of the current value, so a refused call that still wrote would show
        "settings.update": {"self_registration": not w.self_registration},
        "projects.create": {"name": w.fresh_project},
        "projects.add_member": {"project_id": w.project_id, "user_id": w.target_id},
        "projects.remove_member": {"project_id": w.project_id, "user_id": w.target_id},
        "projects.invite": {"project_id": w.project_id, "email": w.fresh_email},
        "budget_codes.create": grant_body(w.project_id, w.fresh_code),
        "budget_codes.update": {
            "budget_code_id": w.code["id"],
            "expected_version": w.code["version"],
            "name": "Renamed by the matrix",
            "funding_amount": "750.00",
        },
        "budget_codes.list": {"project_id": w.project_id},
        "budget_codes.get": {"budget_code_id": w.code["id"]},
        "audit.list": {"target_id": w.project_id},
        "keys.rotate": {},
    }
    return bodies[action]


async def snapshot(auth: AuthHarness, db: asyncpg.Connection, w: World) -> dict[str, Any]:
    """Everything any of the actions could change, seen by an admin and in the database."""
    admin = auth.tokens["admin"]
    return {
        "project": await auth.call("projects.get", {"project_id": w.project_id}, token=admin),
        "codes": await auth.call("budget_codes.list", {"project_id": w.project_id}, token=admin),
        "target": await auth.call("users.list", {"query": w.target_email}, token=admin),
        "fresh_user": await db.fetchval(
            "SELECT count(*) FROM auth.user_account WHERE email = $1", w.fresh_email
        ),
        "fresh_project": await db.fetchval(
            "SELECT count(*) FROM auth.project WHERE name = $1", w.fresh_project
        ),
        "fresh_code": await db.fetchval(
            "SELECT count(*) FROM auth.budget_code WHERE code = $1", w.fresh_code
        ),
        "settings": await auth.call("settings.get", token=admin),
        "keys": sorted(k["kid"] for k in (await auth.published_jwks())["keys"]),
        "audit_max": await db.fetchval("SELECT max(id) FROM auth.audit_entry"),
        "outbox_max": await db.fetchval("SELECT max(id) FROM auth.outbox"),
    }


async def check_allowed(
    auth: AuthHarness, db: asyncpg.Connection, action: str, w: World, result: Any
) -> None:
    """The allowed call did what it says, and the admin sees it."""
    admin = auth.tokens["admin"]
    if action == "users.create":
        assert result["email"] == w.fresh_email
        listed = await auth.call("users.list", {"query": w.fresh_email}, token=admin)
        assert [u["id"] for u in listed["items"]] == [result["id"]]
    elif action == "users.list":
        assert [u["id"] for u in result["items"]] == [w.target_id]
    elif action == "users.disable":
        assert result["status"] == "disabled"
        listed = await auth.call("users.list", {"query": w.target_email}, token=admin)
        assert listed["items"][0]["status"] == "disabled"
    elif action == "settings.update":
        assert result == {"self_registration": not w.self_registration}
        now = await auth.call("settings.get", token=admin)
        assert now["self_registration"] is (not w.self_registration)
    elif action == "projects.create":
        assert result["name"] == w.fresh_project
        got = await auth.call("projects.get", {"project_id": result["id"]}, token=admin)
        assert got["members"] == {result["pi_user_id"]: "pi"}
    elif action == "projects.add_member":
        got = await auth.call("projects.get", {"project_id": w.project_id}, token=admin)
        assert got["members"][w.target_id] == "member"
    elif action == "projects.remove_member":
        got = await auth.call("projects.get", {"project_id": w.project_id}, token=admin)
        assert w.target_id not in got["members"]
    elif action == "projects.invite":
        assert result["invited"] is True
        got = await auth.call("projects.get", {"project_id": w.project_id}, token=admin)
        assert got["members"][result["user_id"]] == "member"
        assert auth.inbox.to(w.fresh_email)
    elif action == "budget_codes.create":
        assert result["code"] == w.fresh_code
        codes = await auth.call("budget_codes.list", {"project_id": w.project_id}, token=admin)
        assert sorted(c["code"] for c in codes) == sorted([w.code["code"], w.fresh_code])
    elif action == "budget_codes.update":
        assert result["version"] == w.code["version"] + 1
        got = await auth.call("budget_codes.get", {"budget_code_id": w.code["id"]}, token=admin)
        assert got["name"] == "Renamed by the matrix"
        assert Decimal(got["funding"]["amount"]) == Decimal("750.00")
    elif action == "budget_codes.list":
        assert [c["id"] for c in result] == [w.code["id"]]
    elif action == "budget_codes.get":
        assert result == w.code
    elif action == "audit.list":
        actions = {e["action"] for e in result["items"]}
        assert {"project.create", "project.member_set"} <= actions
        assert all(e["target_id"] == w.project_id for e in result["items"])
    elif action == "keys.rotate":
        assert result["kid"] in result["keys"]
        published = {k["kid"] for k in (await auth.published_jwks())["keys"]}
        assert result["kid"] in published
    else:  # pragma: no cover - every action has a check
        raise AssertionError(action)


@pytest.mark.parametrize("actor", ACTORS)
@pytest.mark.parametrize("action", ACTIONS)
async def test_access_matrix(
    auth: AuthHarness,
    db: asyncpg.Connection,
    actors: dict[str, Actor],
    action: str,
    actor: str,
) -> None:
    world = await build_world(auth, actors, action)
    body = body_for(action, world)
    token = actors[actor].token
    want = expected(actor, action)
    if want is None:
        try:
            result = await auth.call(action, body, token=token)
            await check_allowed(auth, db, action, world, result)
        finally:
            if action == "settings.update":  # leave the platform switch as it was
                await auth.call(
                    "settings.update",
                    {"self_registration": world.self_registration},
                    token=auth.tokens["admin"],
                )
        return
    mails_before = len(auth.inbox.to(world.fresh_email))
    before = await snapshot(auth, db, world)
    error = await auth.refused(action, body, token=token)
    assert error.status == want, (action, actor, error.status, error.message)
    assert await snapshot(auth, db, world) == before
    assert len(auth.inbox.to(world.fresh_email)) == mails_before


def test_the_matrix_covers_every_cell() -> None:
    """Each action has a decision for each actor, and the table says what DESIGN.md says."""
    cells = {(a, x): expected(a, x) for a in ACTORS for x in ACTIONS}
    assert len(cells) == len(ACTORS) * len(ACTIONS)
    assert all(cells[("admin", x)] is None for x in ACTIONS)
    assert all(cells[("anonymous", x)] == 401 for x in ACTIONS)
    finance_may = {x for x in ACTIONS if cells[("finance", x)] is None}
    assert finance_may == {"budget_codes.list", "budget_codes.get"}
    member_may = {x for x in ACTIONS if cells[("project_member", x)] is None}
    assert member_may == {"budget_codes.list", "budget_codes.get"}


async def test_finance_reads_every_projects_grants_and_members_only_their_own(
    auth: AuthHarness, actors: dict[str, Actor]
) -> None:
    """Without a project filter, finance lists grants of all projects; a member only those of
    their projects; a PI of another project never sees this one's."""
    world = await build_world(auth, actors, "budget_codes.list")
    code_id = world.code["id"]

    async def listed(actor: str) -> set[str]:
        return {
            c["id"] for c in await auth.call("budget_codes.list", {}, token=actors[actor].token)
        }

    assert code_id in await listed("finance")
    assert code_id in await listed("admin")
    mine = await listed("project_member")
    assert code_id in mine
    visible_to_member = await auth.call(
        "budget_codes.list", {}, token=actors["project_member"].token
    )
    member_projects = set((await auth.call("me", token=actors["project_member"].token))["projects"])
    assert {c["project_id"] for c in visible_to_member} <= member_projects
    assert code_id not in await listed("other_pi")
    assert code_id not in await listed("unrelated_member")


@pytest.mark.parametrize(
    "action",
    ["projects.add_member", "projects.invite", "budget_codes.update", "budget_codes.get"],
)
async def test_an_outsiders_refusal_does_not_reveal_that_the_thing_exists(
    auth: AuthHarness, actors: dict[str, Actor], action: str
) -> None:
    """A PI of another lab gets the same answer for a real project or grant as for a made-up
    one, so the refusal cannot be used to probe which projects and grants exist."""
    world = await build_world(auth, actors, action)
    real = body_for(action, world)
    made_up = dict(real)
    if "project_id" in made_up:
        made_up["project_id"] = str(uuid.uuid4())
    if "budget_code_id" in made_up:
        made_up["budget_code_id"] = str(uuid.uuid4())
    token = actors["other_pi"].token
    on_real = await auth.refused(action, real, token=token)
    on_made_up = await auth.refused(action, made_up, token=token)
    assert (on_real.status, on_real.code, on_real.message) == (
        on_made_up.status,
        on_made_up.code,
        on_made_up.message,
    )
    assert on_real.status == 404
