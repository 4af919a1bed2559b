"""Role by action: who may do what in auth, from DESIGN.md's roles table.

Every cell runs the real operation against a fresh project. Allowed cells must succeed; refused
cells must fail with the expected status *and leave everything as it was* (an admin's view of
the project, its budget codes, the target account, the platform settings and the audit log).

Statuses: 401 without a token; 404 for callers outside the project (a refusal that does not
confirm the project exists); 403 for callers who can see the project, or anything, but whose
role does not allow the action.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.auth.integration.conftest import PASSWORD, AuthHarness

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis]

ACTORS = ("admin", "project_pi", "other_pi", "project_member", "finance", "outsider", "anonymous")


@dataclass
class World:
    """One project owned by ``project_pi`` with ``project_member`` in it, and a target account."""

    project_id: str
    budget_code: dict[str, Any]
    target_id: str
    target_email: str
    target_in_project: bool
    fresh_email: str


Body = Callable[[World], dict[str, Any]]

ADMIN_ONLY = {"admin": None}
MANAGERS = {"admin": None, "project_pi": None}
READERS = {"admin": None, "project_pi": None, "project_member": None, "finance": None}
ANY_PI = {"admin": None, "project_pi": None, "other_pi": None}

# operation → (request body, who may, whether the target account starts in the project, kind)
# kind "platform": refusals are 403; kind "project": outsiders get 404, readers 403.
ACTIONS: dict[str, tuple[Body, dict[str, None], bool, str]] = {
    "users.create": (
        lambda w: {
            "email": w.fresh_email,
            "display_name": "New person",
            "password": PASSWORD,
            "roles": ["member"],
        },
        ADMIN_ONLY,
        False,
        "platform",
    ),
    "users.list": (lambda w: {"limit": 5}, ADMIN_ONLY, False, "platform"),
    "users.disable": (lambda w: {"user_id": w.target_id}, ADMIN_ONLY, False, "platform"),
    "settings.update": (lambda w: {"self_registration": False}, ADMIN_ONLY, False, "platform"),
    "audit.list": (lambda w: {"limit": 5}, ADMIN_ONLY, False, "platform"),
    "keys.rotate": (lambda w: {}, ADMIN_ONLY, False, "platform"),
    "projects.create": (
        lambda w: {"name": f"Matrix lab {uuid.uuid4().hex[:8]}"},
        ANY_PI,
        False,
        "platform",
    ),
    "projects.get": (lambda w: {"project_id": w.project_id}, READERS, False, "project"),
    "projects.add_member": (
        lambda w: {"project_id": w.project_id, "user_id": w.target_id},
        MANAGERS,
        False,
        "project",
    ),
    "projects.remove_member": (
        lambda w: {"project_id": w.project_id, "user_id": w.target_id},
        MANAGERS,
        True,
        "project",
    ),
    "projects.invite": (
        lambda w: {"project_id": w.project_id, "email": w.fresh_email},
        MANAGERS,
        False,
        "project",
    ),
    "budget_codes.list": (lambda w: {"project_id": w.project_id}, READERS, False, "project"),
    "budget_codes.get": (
        lambda w: {"budget_code_id": w.budget_code["id"]},
        READERS,
        False,
        "project",
    ),
    "budget_codes.create": (
        lambda w: {
            "project_id": w.project_id,
            "code": f"M-{uuid.uuid4().hex[:10]}",
            "name": "Matrix grant",
            "funding_amount": "500.00",
            "currency": "EUR",
            "valid_from": "2026-01-01",
            "valid_to": "2027-12-31",
        },
        MANAGERS,
        False,
        "project",
    ),
    "budget_codes.update": (
        lambda w: {
            "budget_code_id": w.budget_code["id"],
            "expected_version": w.budget_code["version"],
            "name": "Renamed grant",
        },
        MANAGERS,
        False,
        "project",
    ),
}


@pytest.fixture(scope="module")
async def people(auth: AuthHarness) -> dict[str, tuple[str, str | None]]:
    """The actors: {actor: (user id, access token)}; anonymous has no token."""
    found: dict[str, tuple[str, str | None]] = {}
    admin_me = await auth.call("me", token=auth.tokens["admin"])
    found["admin"] = (str(admin_me["id"]), auth.tokens["admin"])
    for actor, role in (
        ("project_pi", "pi"),
        ("other_pi", "pi"),
        ("project_member", "member"),
        ("finance", "finance"),
        ("outsider", "member"),
    ):
        user_id, email = await auth.user(role)
        found[actor] = (user_id, await auth.login(email))
    found["anonymous"] = ("", None)
    other_token = found["other_pi"][1]
    await auth.call(
        "projects.create", {"name": f"Other lab {uuid.uuid4().hex[:8]}"}, token=other_token
    )
    return found


async def build_world(
    auth: AuthHarness, people: dict[str, tuple[str, str | None]], target_in_project: bool
) -> World:
    pi_token = people["project_pi"][1]
    project = await auth.call(
        "projects.create", {"name": f"Matrix {uuid.uuid4().hex[:8]}"}, token=pi_token
    )
    await auth.call(
        "projects.add_member",
        {"project_id": project["id"], "user_id": people["project_member"][0]},
        token=pi_token,
    )
    target_id, target_email = await auth.user("member")
    if target_in_project:
        await auth.call(
            "projects.add_member",
            {"project_id": project["id"], "user_id": target_id},
            token=pi_token,
        )
    code = await auth.call(
        "budget_codes.create",
        ACTIONS["budget_codes.create"][0](
            World(project["id"], {}, target_id, target_email, target_in_project, "")
        ),
        token=pi_token,
    )
    return World(
        project_id=str(project["id"]),
        budget_code=code,
        target_id=target_id,
        target_email=target_email,
        target_in_project=target_in_project,
        fresh_email=f"fresh-{uuid.uuid4().hex[:10]}@example.org",
    )


async def admin_view(auth: AuthHarness, world: World) -> dict[str, Any]:
    """Everything a refused call could have changed, as an admin sees it (any change made by a
    person also writes an audit entry, so the newest entry must stay the same too)."""
    admin = auth.tokens["admin"]
    return {
        "project": await auth.call("projects.get", {"project_id": world.project_id}, token=admin),
        "codes": await auth.call(
            "budget_codes.list", {"project_id": world.project_id}, token=admin
        ),
        "target": await auth.call("users.list", {"query": world.target_email}, token=admin),
        "fresh": await auth.call("users.list", {"query": world.fresh_email}, token=admin),
        "settings": await auth.call("settings.get", token=admin),
        "keys": sorted(k["kid"] for k in (await auth.published_jwks())["keys"]),
        "audit_head": (await auth.call("audit.list", {"limit": 1}, token=admin))["items"],
    }


def expected_refusal(actor: str, kind: str) -> int:
    if actor == "anonymous":
        return 401
    if kind == "project" and actor in ("other_pi", "outsider"):
        return 404
    return 403


@pytest.mark.parametrize("actor", ACTORS)
@pytest.mark.parametrize("operation", list(ACTIONS))
async def test_role_matrix(
    auth: AuthHarness, people: dict[str, tuple[str, str | None]], operation: str, actor: str
) -> None:
    body_of, allowed, target_in_project, kind = ACTIONS[operation]
    world = await build_world(auth, people, target_in_project)
    token = people[actor][1]
    if actor in allowed:
        result = await auth.call(operation, body_of(world), token=token)
        assert result is not None
        return
    before = await admin_view(auth, world)
    error = await auth.refused(operation, body_of(world), token=token)
    assert error.status == expected_refusal(actor, kind), (operation, actor, error)
    assert await admin_view(auth, world) == before
