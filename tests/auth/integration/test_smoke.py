"""The auth service answers over NATS: login, me, a project and a grant end to end."""

from __future__ import annotations

import pytest

from compgrid_runtime.errors import DomainError
from tests.auth.integration.conftest import ADMIN_EMAIL, AuthHarness

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis]


async def test_admin_logs_in_and_sees_itself(auth: AuthHarness) -> None:
    me = await auth.call("me", token=auth.tokens["admin"])
    assert me["email"] == ADMIN_EMAIL
    assert me["roles"] == ["admin"]


async def test_pi_creates_project_and_grant_visible_to_members(auth: AuthHarness) -> None:
    pi_id, pi_email = await auth.user("pi")
    member_id, member_email = await auth.user("member")
    pi = await auth.login(pi_email)
    project = await auth.call("projects.create", {"name": f"Lab {pi_id[:8]}"}, token=pi)
    await auth.call(
        "projects.add_member", {"project_id": project["id"], "user_id": member_id}, token=pi
    )
    code = await auth.call(
        "budget_codes.create",
        {
            "project_id": project["id"],
            "code": f"G-{pi_id[:8]}",
            "name": "Grant",
            "funding_amount": "1000.00",
            "currency": "EUR",
            "valid_from": "2026-01-01",
            "valid_to": "2026-12-31",
        },
        token=pi,
    )
    member = await auth.login(member_email)
    seen = await auth.call("budget_codes.list", {"project_id": project["id"]}, token=member)
    assert [c["code"] for c in seen] == [code["code"]]
    with pytest.raises(DomainError) as refused:
        await auth.call(
            "budget_codes.create",
            {
                "project_id": project["id"],
                "code": f"H-{pi_id[:8]}",
                "name": "Grant",
                "funding_amount": "1.00",
                "currency": "EUR",
                "valid_from": "2026-01-01",
                "valid_to": "2026-12-31",
            },
            token=member,
        )
    assert refused.value.status == 403
