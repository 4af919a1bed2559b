"""What auth tells the other services (events on the AUTH stream, with the full state they need)
and what it keeps for the administrators (an append-only audit log they can filter)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from compgrid_events import Event
from compgrid_events.auth import (
    BudgetCodeCreated,
    BudgetCodeUpdated,
    HardLimitBehaviour,
    MembershipChanged,
    ProjectCreated,
    ProjectRole,
    UserDisabled,
    UserRegistered,
)
from compgrid_events.registry import registry
from tests.auth.integration.conftest import AuthHarness

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis]


async def auth_events(auth: AuthHarness, wanted: int, about: set[str]) -> list[Event]:
    """Read the AUTH stream from the start until ``wanted`` events mention one of ``about``."""
    js = auth.nc.jetstream()
    sub = await js.pull_subscribe(
        "auth.>",
        stream="AUTH",
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=30),
    )
    found: list[Event] = []
    deadline = asyncio.get_running_loop().time() + 15
    try:
        while len(found) < wanted and asyncio.get_running_loop().time() < deadline:
            try:
                batch = await sub.fetch(200, timeout=1)
            except TimeoutError:
                continue
            for msg in batch:
                event = registry.decode(msg.subject, msg.data)
                if about & {str(v) for v in event.model_dump().values()}:
                    found.append(event)
                await msg.ack()
    finally:
        await sub.unsubscribe()
    return found


async def test_people_projects_and_grants_reach_the_bus_with_their_full_state(
    auth: AuthHarness,
) -> None:
    admin = auth.tokens["admin"]
    pi_id, pi_email = await auth.user("pi")
    member_id, _ = await auth.user("member")
    pi = await auth.login(pi_email)
    project = await auth.call(
        "projects.create",
        {"name": "Events lab", "requires_approval_above": {"amount": "250.00", "currency": "EUR"}},
        token=pi,
    )
    await auth.call(
        "projects.add_member", {"project_id": project["id"], "user_id": member_id}, token=pi
    )
    code = await auth.call(
        "budget_codes.create",
        {
            "project_id": project["id"],
            "code": f"EV-{uuid.uuid4().hex[:8]}",
            "name": "Event grant",
            "funding_amount": "1200.50",
            "currency": "CHF",
            "valid_from": "2026-01-01",
            "valid_to": "2027-06-30",
            "soft_thresholds_percent": ["60", "90"],
            "hard_limit_behaviour": "block_new",
        },
        token=pi,
    )
    await auth.call(
        "budget_codes.update",
        {"budget_code_id": code["id"], "expected_version": 1, "funding_amount": "1500"},
        token=pi,
    )
    await auth.call(
        "projects.remove_member", {"project_id": project["id"], "user_id": member_id}, token=pi
    )
    await auth.call("users.disable", {"user_id": member_id}, token=admin)

    about = {pi_id, member_id, str(project["id"]), str(code["id"])}
    events = await auth_events(auth, 8, about)
    kinds = [type(e) for e in events]
    assert kinds.count(UserRegistered) == 2
    assert kinds.count(MembershipChanged) >= 3  # the PI's own, the member added, then removed

    created = next(e for e in events if isinstance(e, ProjectCreated))
    assert str(created.pi_user_id) == pi_id
    assert created.requires_approval_above is not None
    assert created.requires_approval_above.amount == Decimal("250.00")

    member_changes = [
        e for e in events if isinstance(e, MembershipChanged) and str(e.user_id) == member_id
    ]
    assert [e.role for e in member_changes] == [ProjectRole.MEMBER, None]

    grant = next(e for e in events if isinstance(e, BudgetCodeCreated))
    assert str(grant.project_id) == str(project["id"])
    assert grant.funding.amount == Decimal("1200.50")
    assert grant.funding.currency == "CHF"
    assert (grant.valid_from, grant.valid_to) == (date(2026, 1, 1), date(2027, 6, 30))
    assert grant.soft_thresholds_percent == (Decimal(60), Decimal(90))
    assert grant.hard_limit_behaviour is HardLimitBehaviour.BLOCK_NEW
    assert grant.version == 1

    updated = next(e for e in events if isinstance(e, BudgetCodeUpdated))
    assert updated.funding.amount == Decimal("1500")
    assert updated.version == 2
    # the update carries the whole state, not only what changed
    assert updated.code == grant.code
    assert updated.hard_limit_behaviour is HardLimitBehaviour.BLOCK_NEW
    assert updated.soft_thresholds_percent == (Decimal(60), Decimal(90))

    disabled = [e for e in events if isinstance(e, UserDisabled)]
    assert [str(e.user_id) for e in disabled] == [member_id]


async def test_every_change_by_a_person_is_audited_with_who_what_where(
    auth: AuthHarness,
) -> None:
    admin = auth.tokens["admin"]
    admin_id = str((await auth.call("me", token=admin))["id"])
    started = datetime.now(UTC) - timedelta(seconds=1)
    request_address = "192.0.2.77"
    target_id, _ = await auth.user("member")
    await auth.call("users.disable", {"user_id": target_id}, token=admin, address=request_address)
    await auth.call("users.enable", {"user_id": target_id}, token=admin, address=request_address)

    entries = (await auth.call("audit.list", {"target_id": target_id, "limit": 10}, token=admin))[
        "items"
    ]
    actions = [e["action"] for e in entries]
    assert actions[:3] == ["user.enable", "user.disable", "user.create"]  # newest first
    disable = entries[1]
    assert disable["actor_id"] == admin_id
    assert disable["target_type"] == "user"
    assert disable["client_address"] == request_address
    assert disable["request_id"]  # the caller's request id, for tracing a complaint
    assert datetime.fromisoformat(disable["at"]) >= started

    by_action = (
        await auth.call(
            "audit.list",
            {"action": "user.disable", "actor_id": admin_id, "since": started.isoformat()},
            token=admin,
        )
    )["items"]
    assert target_id in [e["target_id"] for e in by_action]
    for entry in by_action:  # other tests' entries may fall in the window; the filter holds
        assert entry["action"] == "user.disable"
        assert entry["actor_id"] == admin_id
        assert datetime.fromisoformat(entry["at"]) >= started
    in_the_past = (
        await auth.call(
            "audit.list",
            {"target_id": target_id, "until": (started - timedelta(days=1)).isoformat()},
            token=admin,
        )
    )["items"]
    assert in_the_past == []


async def test_audit_pages_through_with_a_cursor(auth: AuthHarness) -> None:
    admin = auth.tokens["admin"]
    first = await auth.call("audit.list", {"limit": 2}, token=admin)
    assert len(first["items"]) == 2
    assert first["next_cursor"]
    second = await auth.call(
        "audit.list", {"limit": 2, "before_id": first["items"][-1]["id"]}, token=admin
    )
    assert all(e["id"] < first["items"][-1]["id"] for e in second["items"])


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE auth.audit_entry SET action = 'nothing.happened'",
        "DELETE FROM auth.audit_entry",
        "TRUNCATE auth.audit_entry",
    ],
)
async def test_the_audit_log_is_append_only_in_the_database(
    auth: AuthHarness, db: asyncpg.Connection, statement: str
) -> None:
    await auth.user("member")  # at least one entry exists
    count = await db.fetchval("SELECT count(*) FROM auth.audit_entry")
    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        await db.execute(statement)
    assert await db.fetchval("SELECT count(*) FROM auth.audit_entry") == count


async def test_a_refused_change_writes_no_audit_entry(auth: AuthHarness) -> None:
    admin = auth.tokens["admin"]
    _, email = await auth.user("member")
    member = await auth.login(email)
    head: list[dict[str, Any]] = (await auth.call("audit.list", {"limit": 1}, token=admin))["items"]
    error = await auth.refused("projects.create", {"name": "Not allowed"}, token=member)
    assert error.status == 403
    assert (await auth.call("audit.list", {"limit": 1}, token=admin))["items"] == head
