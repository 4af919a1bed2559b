"""Budget codes (grants): what a PI may enter, how updates are guarded, and membership in
several projects."""

from __future__ import annotations

import uuid
from typing import Any

import jwt
import pytest

from tests.auth.integration.conftest import AuthHarness

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis]


def grant(project_id: str, **overrides: Any) -> dict[str, Any]:
    body = {
        "project_id": project_id,
        "code": f"R-{uuid.uuid4().hex[:10]}",
        "name": "Rules grant",
        "funding_amount": "1000.00",
        "currency": "EUR",
        "valid_from": "2026-01-01",
        "valid_to": "2026-12-31",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


async def pi_with_project(auth: AuthHarness) -> tuple[str, str]:
    """Return (PI token, project id)."""
    _, email = await auth.user("pi")
    token = await auth.login(email)
    project = await auth.call(
        "projects.create", {"name": f"Rules {uuid.uuid4().hex[:8]}"}, token=token
    )
    return token, str(project["id"])


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"valid_from": "2026-12-31", "valid_to": "2026-01-01"}, "valid_to"),
        ({"funding_amount": "0"}, "funding_amount"),
        ({"funding_amount": "-5.00"}, "funding_amount"),
        ({"funding_amount": "12.345678"}, "funding_amount"),
        ({"currency": "euro"}, "currency"),
        ({"code": "has spaces"}, "code"),
        ({"code": ""}, "code"),
        ({"name": ""}, "name"),
        ({"soft_thresholds_percent": ["0"]}, "soft_thresholds_percent"),
        ({"soft_thresholds_percent": ["50", "2000"]}, "soft_thresholds_percent"),
        ({"soft_thresholds_percent": []}, "soft_thresholds_percent"),
        ({"hard_limit_behaviour": "explode"}, "hard_limit_behaviour"),
        ({"valid_to": "not a date"}, "valid_to"),
        ({"colour": "blue"}, "colour"),
    ],
)
async def test_bad_grants_are_refused_with_the_field_named_and_nothing_written(
    auth: AuthHarness, overrides: dict[str, Any], field: str
) -> None:
    token, project_id = await pi_with_project(auth)
    error = await auth.refused("budget_codes.create", grant(project_id, **overrides), token=token)
    assert error.status == 422
    assert field in f"{error.field} {error.message}", error.message
    assert await auth.call("budget_codes.list", {"project_id": project_id}, token=token) == []


async def test_a_code_is_unique(auth: AuthHarness) -> None:
    token, project_id = await pi_with_project(auth)
    first = await auth.call("budget_codes.create", grant(project_id), token=token)
    error = await auth.refused(
        "budget_codes.create", grant(project_id, code=first["code"], name="Copy"), token=token
    )
    assert error.status == 409
    assert error.code == "code_taken"
    listed = await auth.call("budget_codes.list", {"project_id": project_id}, token=token)
    assert [c["name"] for c in listed] == ["Rules grant"]


async def test_defaults_are_the_documented_ones(auth: AuthHarness) -> None:
    token, project_id = await pi_with_project(auth)
    created = await auth.call("budget_codes.create", grant(project_id), token=token)
    assert [float(t) for t in created["soft_thresholds_percent"]] == [50.0, 80.0, 100.0]
    assert created["hard_limit_behaviour"] == "stop_instances"
    assert created["status"] == "active"
    assert created["version"] == 1


async def test_updates_are_guarded_by_the_version_they_start_from(auth: AuthHarness) -> None:
    token, project_id = await pi_with_project(auth)
    created = await auth.call("budget_codes.create", grant(project_id), token=token)
    ref = {"budget_code_id": created["id"]}
    updated = await auth.call(
        "budget_codes.update",
        {**ref, "expected_version": 1, "funding_amount": "1500", "status": "suspended"},
        token=token,
    )
    assert updated["version"] == 2
    assert float(updated["funding"]["amount"]) == 1500
    assert updated["funding"]["currency"] == "EUR"
    assert updated["status"] == "suspended"

    stale = await auth.refused(
        "budget_codes.update", {**ref, "expected_version": 1, "name": "Lost update"}, token=token
    )
    assert stale.status == 409
    assert stale.code == "version_mismatch"
    bad = await auth.refused(
        "budget_codes.update",
        {**ref, "expected_version": 2, "valid_to": "2025-01-01"},
        token=token,
    )
    assert bad.status == 422
    now = await auth.call("budget_codes.get", ref, token=token)
    assert now["version"] == 2
    assert now["name"] == "Rules grant"
    assert now["valid_to"] == "2026-12-31"


async def test_a_person_in_two_projects_sees_both_with_their_role(auth: AuthHarness) -> None:
    member_id, member_email = await auth.user("member")
    token_a, project_a = await pi_with_project(auth)
    token_b, project_b = await pi_with_project(auth)
    await auth.call(
        "projects.add_member", {"project_id": project_a, "user_id": member_id}, token=token_a
    )
    await auth.call(
        "projects.add_member",
        {"project_id": project_b, "user_id": member_id, "role": "pi"},
        token=token_b,
    )
    member = await auth.login(member_email)
    me = await auth.call("me", token=member)
    assert me["projects"] == {project_a: "member", project_b: "pi"}
    claims = jwt.decode(member, options={"verify_signature": False})
    assert claims["projects"] == {project_a: "member", project_b: "pi"}
    # a PI in project B manages B's grants, and stays a plain member in A
    assert await auth.call("budget_codes.create", grant(project_b), token=member)
    refused = await auth.refused("budget_codes.create", grant(project_a), token=member)
    assert refused.status == 403
