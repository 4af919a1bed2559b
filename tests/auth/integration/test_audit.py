"""The audit log: every state change a person makes (actor, action, target, time, client
address, request id), filterable by admins only, and append-only in the database itself."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from compgrid_runtime.errors import DomainError
from compgrid_runtime.rpc import call
from tests.auth.integration.conftest import PASSWORD, AuthHarness

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis]

SLACK = timedelta(seconds=2)


@dataclass
class Sent:
    """One request the test sent, with the request id and address it carried."""

    operation: str
    request_id: str
    address: str
    result: Any = None


@dataclass
class Client:
    """Calls the service like the gateway does, with a request id and address we choose."""

    auth: AuthHarness
    sent: list[Sent] = field(default_factory=list)

    async def __call__(
        self, operation: str, body: dict[str, Any] | None = None, token: str | None = None
    ) -> Any:
        request_id = f"req-{uuid.uuid4().hex}"
        address = f"192.0.2.{len(self.sent) % 250 + 1}"
        result = await call(
            self.auth.nc,
            "auth",
            operation,
            body or {},
            token=token,
            client_address=address,
            request_id=request_id,
        )
        self.sent.append(Sent(operation, request_id, address, result))
        return result

    def last(self) -> Sent:
        return self.sent[-1]


async def entries_for(auth: AuthHarness, request_id: str, since: datetime) -> list[dict[str, Any]]:
    """The audit entries written by one request (newest first)."""
    page = await auth.call(
        "audit.list", {"since": since.isoformat(), "limit": 500}, token=auth.tokens["admin"]
    )
    return [e for e in page["items"] if e["request_id"] == request_id]


async def admin_id(auth: AuthHarness) -> str:
    return str((await auth.call("me", token=auth.tokens["admin"]))["id"])


async def a_pi(auth: AuthHarness) -> tuple[str, str, str]:
    """A fresh PI: (user id, email, token)."""
    user_id, email = await auth.user("pi")
    return user_id, email, await auth.login(email)


def grant(project_id: str) -> dict[str, Any]:
    return {
        "project_id": project_id,
        "code": f"AU-{uuid.uuid4().hex[:12]}",
        "name": "Audit grant",
        "funding_amount": "900.00",
        "currency": "EUR",
        "valid_from": "2026-01-01",
        "valid_to": "2026-12-31",
    }


# A scenario does one state change through ``client`` (its last request is the one audited) and
# returns what the entries of that request must say: (actor id, [(action, target type, target)]).
Expected = tuple[str, list[tuple[str, str, str]]]
Scenario = Callable[[AuthHarness, Client], Awaitable[Expected]]


async def users_create(auth: AuthHarness, c: Client) -> Expected:
    email = f"audited-{uuid.uuid4().hex[:10]}@example.org"
    body = {"email": email, "display_name": "Audited", "password": PASSWORD}
    created = await c("users.create", body, auth.tokens["admin"])
    return await admin_id(auth), [("user.create", "user", created["id"])]


async def users_disable(auth: AuthHarness, c: Client) -> Expected:
    target, _ = await auth.user("member")
    await c("users.disable", {"user_id": target, "reason": "left"}, auth.tokens["admin"])
    return await admin_id(auth), [("user.disable", "user", target)]


async def users_enable(auth: AuthHarness, c: Client) -> Expected:
    target, _ = await auth.user("member")
    await auth.call("users.disable", {"user_id": target}, token=auth.tokens["admin"])
    await c("users.enable", {"user_id": target}, auth.tokens["admin"])
    return await admin_id(auth), [("user.enable", "user", target)]


async def settings_update(auth: AuthHarness, c: Client) -> Expected:
    admin = auth.tokens["admin"]
    current = (await auth.call("settings.get", token=admin))["self_registration"]
    await c("settings.update", {"self_registration": not current}, admin)
    await auth.call("settings.update", {"self_registration": current}, token=admin)
    return await admin_id(auth), [("settings.update", "settings", "self_registration")]


async def projects_create(auth: AuthHarness, c: Client) -> Expected:
    pi_id, _, pi = await a_pi(auth)
    project = await c("projects.create", {"name": f"Audit lab {uuid.uuid4().hex}"}, pi)
    return pi_id, [
        ("project.create", "project", project["id"]),
        ("project.member_set", "project", project["id"]),
    ]


async def projects_add_member(auth: AuthHarness, c: Client) -> Expected:
    pi_id, _, pi = await a_pi(auth)
    project = await auth.call("projects.create", {"name": f"Lab {uuid.uuid4().hex}"}, token=pi)
    member, _ = await auth.user("member")
    await c("projects.add_member", {"project_id": project["id"], "user_id": member}, pi)
    return pi_id, [("project.member_set", "project", project["id"])]


async def projects_remove_member(auth: AuthHarness, c: Client) -> Expected:
    pi_id, _, pi = await a_pi(auth)
    project = await auth.call("projects.create", {"name": f"Lab {uuid.uuid4().hex}"}, token=pi)
    member, _ = await auth.user("member")
    ref = {"project_id": project["id"], "user_id": member}
    await auth.call("projects.add_member", ref, token=pi)
    await c("projects.remove_member", ref, pi)
    return pi_id, [("project.member_remove", "project", project["id"])]


async def projects_invite(auth: AuthHarness, c: Client) -> Expected:
    pi_id, _, pi = await a_pi(auth)
    project = await auth.call("projects.create", {"name": f"Lab {uuid.uuid4().hex}"}, token=pi)
    email = f"invitee-{uuid.uuid4().hex[:10]}@example.org"
    invited = await c("projects.invite", {"project_id": project["id"], "email": email}, pi)
    return pi_id, [
        ("user.create", "user", invited["user_id"]),
        ("project.member_set", "project", project["id"]),
    ]


async def budget_codes_create(auth: AuthHarness, c: Client) -> Expected:
    pi_id, _, pi = await a_pi(auth)
    project = await auth.call("projects.create", {"name": f"Lab {uuid.uuid4().hex}"}, token=pi)
    code = await c("budget_codes.create", grant(project["id"]), pi)
    return pi_id, [("budget_code.create", "budget_code", code["id"])]


async def budget_codes_update(auth: AuthHarness, c: Client) -> Expected:
    pi_id, _, pi = await a_pi(auth)
    project = await auth.call("projects.create", {"name": f"Lab {uuid.uuid4().hex}"}, token=pi)
    code = await auth.call("budget_codes.create", grant(project["id"]), token=pi)
    body = {"budget_code_id": code["id"], "expected_version": 1, "funding_amount": "1200"}
    await c("budget_codes.update", body, pi)
    return pi_id, [("budget_code.update", "budget_code", code["id"])]


async def api_tokens_create(auth: AuthHarness, c: Client) -> Expected:
    pi_id, _, pi = await a_pi(auth)
    created = await c("api_tokens.create", {"name": "laptop"}, pi)
    return pi_id, [("api_token.create", "api_token", created["id"])]


async def api_tokens_revoke(auth: AuthHarness, c: Client) -> Expected:
    pi_id, _, pi = await a_pi(auth)
    created = await auth.call("api_tokens.create", {"name": "laptop"}, token=pi)
    await c("api_tokens.revoke", {"token_id": created["id"]}, pi)
    return pi_id, [("api_token.revoke", "api_token", created["id"])]


async def change_password(auth: AuthHarness, c: Client) -> Expected:
    pi_id, _, pi = await a_pi(auth)
    body = {"current_password": PASSWORD, "new_password": "another quite fine passphrase"}
    await c("change_password", body, pi)
    return pi_id, [("user.password_change", "user", pi_id)]


async def keys_rotate(auth: AuthHarness, c: Client) -> Expected:
    rotated = await c("keys.rotate", {}, auth.tokens["admin"])
    return await admin_id(auth), [("keys.rotate", "signing_key", rotated["kid"])]


async def login(auth: AuthHarness, c: Client) -> Expected:
    user_id, email = await auth.user("member")
    await c("login", {"email": email, "password": PASSWORD})
    return user_id, [("session.login", "user", user_id)]


async def logout(auth: AuthHarness, c: Client) -> Expected:
    user_id, email = await auth.user("member")
    pair = await auth.call("login", {"email": email, "password": PASSWORD})
    await c("logout", {"refresh_token": pair["refresh_token"]})
    return user_id, [("session.logout", "user", user_id)]


SCENARIOS: dict[str, Scenario] = {
    "users.create": users_create,
    "users.disable": users_disable,
    "users.enable": users_enable,
    "settings.update": settings_update,
    "projects.create": projects_create,
    "projects.add_member": projects_add_member,
    "projects.remove_member": projects_remove_member,
    "projects.invite": projects_invite,
    "budget_codes.create": budget_codes_create,
    "budget_codes.update": budget_codes_update,
    "api_tokens.create": api_tokens_create,
    "api_tokens.revoke": api_tokens_revoke,
    "change_password": change_password,
    "keys.rotate": keys_rotate,
    "login": login,
    "logout": logout,
}


@pytest.mark.parametrize("operation", list(SCENARIOS))
async def test_every_change_by_a_person_is_audited_with_who_what_when_where(
    auth: AuthHarness, operation: str
) -> None:
    client = Client(auth)
    started = datetime.now(UTC) - SLACK
    actor, wanted = await SCENARIOS[operation](auth, client)
    sent = next(s for s in client.sent if s.operation == operation)
    finished = datetime.now(UTC) + SLACK

    entries = await entries_for(auth, sent.request_id, started)
    found = sorted((e["action"], e["target_type"], e["target_id"]) for e in entries)
    assert found == sorted(wanted), (operation, entries)
    for entry in entries:
        assert entry["actor_id"] == actor
        assert entry["client_address"] == sent.address
        assert entry["request_id"] == sent.request_id
        assert started <= datetime.fromisoformat(entry["at"]) <= finished


async def test_reads_and_refusals_write_no_audit_entry(
    auth: AuthHarness, db: asyncpg.Connection
) -> None:
    admin = auth.tokens["admin"]
    pi_id, _, pi = await a_pi(auth)
    project = await auth.call("projects.create", {"name": f"Lab {uuid.uuid4().hex}"}, token=pi)
    code = await auth.call("budget_codes.create", grant(project["id"]), token=pi)
    member_id, member_email = await auth.user("member")
    member = await auth.login(member_email)
    newest = await db.fetchval("SELECT max(id) FROM auth.audit_entry")

    reads: list[tuple[str, dict[str, Any], str]] = [
        ("me", {}, pi),
        ("projects.get", {"project_id": project["id"]}, pi),
        ("projects.list", {}, pi),
        ("budget_codes.list", {"project_id": project["id"]}, pi),
        ("budget_codes.get", {"budget_code_id": code["id"]}, pi),
        ("users.list", {"query": member_email}, admin),
        ("settings.get", {}, admin),
        ("audit.list", {"limit": 1}, admin),
    ]
    for operation, body, token in reads:
        assert await auth.call(operation, body, token=token) is not None

    refusals: list[tuple[str, dict[str, Any], str | None, int]] = [
        ("projects.create", {"name": f"No {uuid.uuid4().hex}"}, member, 403),
        ("budget_codes.create", grant(project["id"]), member, 404),
        ("users.disable", {"user_id": pi_id}, pi, 403),
        ("projects.remove_member", {"project_id": project["id"], "user_id": pi_id}, pi, 409),
        (
            "budget_codes.update",
            {"budget_code_id": code["id"], "expected_version": 7, "name": "x"},
            pi,
            409,
        ),
        ("budget_codes.create", {**grant(project["id"]), "currency": "eur"}, pi, 422),
        ("projects.add_member", {"project_id": project["id"], "user_id": member_id}, None, 401),
        ("keys.rotate", {}, pi, 403),
    ]
    for operation, body, who, status in refusals:
        error = await auth.refused(operation, body, token=who)
        assert error.status == status, (operation, error.message)
    assert await db.fetchval("SELECT max(id) FROM auth.audit_entry") == newest


async def test_the_filters_narrow_by_actor_action_target_and_time(auth: AuthHarness) -> None:
    admin = auth.tokens["admin"]
    pi_id, _, pi = await a_pi(auth)
    other_pi_id, _, other_pi = await a_pi(auth)
    started = datetime.now(UTC) - SLACK
    project = await auth.call("projects.create", {"name": f"Lab {uuid.uuid4().hex}"}, token=pi)
    other = await auth.call("projects.create", {"name": f"Lab {uuid.uuid4().hex}"}, token=other_pi)
    await asyncio.sleep(0.05)
    code = await auth.call("budget_codes.create", grant(project["id"]), token=pi)
    await auth.call("budget_codes.create", grant(other["id"]), token=other_pi)
    await auth.call(
        "budget_codes.update",
        {"budget_code_id": code["id"], "expected_version": 1, "name": "Renamed"},
        token=pi,
    )

    async def audit(**filters: Any) -> list[dict[str, Any]]:
        body = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in filters.items()}
        page = await auth.call("audit.list", {"limit": 500, **body}, token=admin)
        return list(page["items"])

    by_actor = await audit(actor_id=pi_id)
    assert by_actor, "the PI's own entries"
    assert {e["actor_id"] for e in by_actor} == {pi_id}
    assert [e["action"] for e in by_actor if e["action"] != "session.login"] == [
        "budget_code.update",
        "budget_code.create",
        "project.member_set",
        "project.create",
    ]
    assert [e["id"] for e in by_actor] == sorted((e["id"] for e in by_actor), reverse=True)

    created = await audit(actor_id=pi_id, action="budget_code.create")
    assert [(e["target_type"], e["target_id"]) for e in created] == [("budget_code", code["id"])]
    assert created[0]["details"] == {"code": code["code"]}

    every_create = await audit(action="budget_code.create", since=started)
    assert {e["actor_id"] for e in every_create} >= {pi_id, other_pi_id}
    assert {e["action"] for e in every_create} == {"budget_code.create"}

    on_code = await audit(target_id=code["id"])
    assert [e["action"] for e in on_code] == ["budget_code.update", "budget_code.create"]
    on_project = await audit(target_id=project["id"])
    assert sorted(e["action"] for e in on_project) == ["project.create", "project.member_set"]
    assert {e["target_id"] for e in on_project} == {project["id"]}

    # a time window: entries at or after ``since`` and strictly before ``until``
    project_at = datetime.fromisoformat(
        next(e for e in on_project if e["action"] == "project.create")["at"]
    )
    code_at = datetime.fromisoformat(on_code[-1]["at"])
    assert code_at > project_at
    assert [e["action"] for e in await audit(actor_id=pi_id, since=code_at)] == [
        "budget_code.update",
        "budget_code.create",
    ]
    before_code = await audit(actor_id=pi_id, since=project_at, until=code_at)
    assert sorted(e["action"] for e in before_code) == ["project.create", "project.member_set"]
    assert all(project_at <= datetime.fromisoformat(e["at"]) < code_at for e in before_code)
    assert await audit(actor_id=pi_id, since=datetime.now(UTC) + timedelta(hours=1)) == []
    assert await audit(target_id=code["id"], until=started - timedelta(days=1)) == []

    # filters combine (AND), and one that matches nothing gives nothing
    assert await audit(actor_id=other_pi_id, target_id=code["id"]) == []
    assert await audit(action=f"no.such.{uuid.uuid4().hex[:8]}") == []

    # paging through one actor's entries with the cursor covers each entry once
    first = await auth.call("audit.list", {"actor_id": pi_id, "limit": 2}, token=admin)
    assert first["next_cursor"] == str(first["items"][-1]["id"])
    rest = await audit(actor_id=pi_id, before_id=int(first["next_cursor"]))
    assert [e["id"] for e in first["items"] + rest] == [e["id"] for e in by_actor]


@pytest.mark.parametrize("role", ["pi", "member", "finance", None])
async def test_only_admins_read_the_audit_log(auth: AuthHarness, role: str | None) -> None:
    token = None
    user_id = str(uuid.uuid4())
    if role is not None:
        user_id, email = await auth.user(role)
        token = await auth.login(email)
    for body in ({}, {"actor_id": user_id}, {"action": "session.login"}):
        error = await auth.refused("audit.list", body, token=token)
        assert error.status == (401 if role is None else 403)
    # while an admin sees that person's own login (when there is one)
    mine = await auth.call("audit.list", {"actor_id": user_id}, token=auth.tokens["admin"])
    assert [e["action"] for e in mine["items"]] == ([] if role is None else ["session.login"])


async def test_names_with_sql_and_html_reach_the_audit_log_verbatim(auth: AuthHarness) -> None:
    pi_id, _, pi = await a_pi(auth)
    name = f"x'); DELETE FROM auth.audit_entry;-- <img src=x onerror=alert(1)> {uuid.uuid4().hex}"
    project = await auth.call("projects.create", {"name": name}, token=pi)
    entries = (
        await auth.call(
            "audit.list",
            {"target_id": project["id"], "action": "project.create"},
            token=auth.tokens["admin"],
        )
    )["items"]
    assert [(e["actor_id"], e["details"]) for e in entries] == [(pi_id, {"name": name})]


async def test_the_audit_table_is_append_only_in_the_database(
    auth: AuthHarness, db: asyncpg.Connection
) -> None:
    target, _ = await auth.user("member")
    row = await db.fetchrow(
        "SELECT * FROM auth.audit_entry WHERE target_id = $1 AND action = 'user.create'", target
    )
    assert row is not None
    total = await db.fetchval("SELECT count(*) FROM auth.audit_entry")
    statements = [
        ("UPDATE auth.audit_entry SET actor_id = NULL WHERE id = $1", (row["id"],)),
        ("UPDATE auth.audit_entry SET details = '{}'::jsonb WHERE id = $1", (row["id"],)),
        ("UPDATE auth.audit_entry SET at = at - interval '1 day'", ()),
        ("DELETE FROM auth.audit_entry WHERE id = $1", (row["id"],)),
        ("DELETE FROM auth.audit_entry", ()),
        ("TRUNCATE auth.audit_entry", ()),
    ]
    for statement, args in statements:
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await db.execute(statement, *args)
    # also inside an explicit transaction, which is then rolled back as a whole
    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        async with db.transaction():
            await db.execute("DELETE FROM auth.audit_entry WHERE id = $1", row["id"])
    assert await db.fetchrow("SELECT * FROM auth.audit_entry WHERE id = $1", row["id"]) == row
    assert await db.fetchval("SELECT count(*) FROM auth.audit_entry") == total


def test_scenarios_cover_every_state_changing_operation() -> None:
    """Every operation that changes state for a person has an audit scenario above."""
    from compgrid_auth.entrypoints.rpc import AUTHENTICATED, PUBLIC

    reads = {
        "me",
        "users.list",
        "settings.get",
        "projects.list",
        "projects.get",
        "budget_codes.list",
        "budget_codes.get",
        "api_tokens.list",
        "audit.list",
    }
    # covered by their own tests (they need mailed tokens or API tokens set up)
    elsewhere = {
        "refresh",
        "exchange_api_token",
        "register",
        "request_password_reset",
        "reset_password",
        "accept_invitation",
    }
    changes = (set(AUTHENTICATED) | set(PUBLIC)) - reads - elsewhere
    assert changes == set(SCENARIOS)


async def test_an_error_carries_no_audit_trace_of_a_half_done_change(
    auth: AuthHarness, db: asyncpg.Connection
) -> None:
    """A project whose creation fails half-way (duplicate name) leaves no audit entry, no
    membership and no event behind."""
    _, _, pi = await a_pi(auth)
    name = f"Dup {uuid.uuid4().hex}"
    await auth.call("projects.create", {"name": name}, token=pi)
    _, _, other_pi = await a_pi(auth)
    newest = await db.fetchval("SELECT max(id) FROM auth.audit_entry")
    outbox = await db.fetchval("SELECT max(id) FROM auth.outbox")
    with pytest.raises(DomainError) as caught:
        await auth.call("projects.create", {"name": name}, token=other_pi)
    assert caught.value.status == 409
    assert await db.fetchval("SELECT max(id) FROM auth.audit_entry") == newest
    assert await db.fetchval("SELECT max(id) FROM auth.outbox") == outbox
