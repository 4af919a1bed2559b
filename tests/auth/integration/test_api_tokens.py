"""API tokens: named, shown once, stored hashed, exchanged for access tokens, revocable."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from compgrid_runtime.errors import Unauthorized
from tests.auth.integration.conftest import AuthHarness

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis]


async def _create(auth: AuthHarness, token: str, name: str, **extra: Any) -> dict[str, Any]:
    created = await auth.call("api_tokens.create", {"name": name, **extra}, token=token)
    assert isinstance(created, dict)
    return created


async def test_the_secret_is_shown_once_and_never_listed(auth: AuthHarness) -> None:
    _, email = await auth.user()
    access = await auth.login(email)

    created = await _create(auth, access, "laptop cli")

    secret = created["token"]
    assert secret.startswith("cgt_")
    assert len(secret) >= 40
    assert created["name"] == "laptop cli"
    assert secret.startswith(created["prefix"])
    assert len(created["prefix"]) < len(secret) // 2
    assert created["last_used_at"] is None
    assert created["revoked_at"] is None

    listed = await auth.call("api_tokens.list", token=access)
    assert [t["id"] for t in listed] == [created["id"]]
    assert "token" not in listed[0]
    assert secret not in str(listed)
    assert listed[0]["prefix"] == created["prefix"]


async def test_tokens_are_stored_hashed(auth: AuthHarness, db: asyncpg.Connection) -> None:
    _, email = await auth.user()
    access = await auth.login(email)
    created = await _create(auth, access, "hashed")
    secret = created["token"]
    random_part = secret.removeprefix("cgt_")

    row = await db.fetchrow(
        "SELECT row_to_json(t)::text AS text, token_hash FROM auth.api_token t WHERE id = $1",
        uuid.UUID(created["id"]),
    )
    assert row is not None
    assert secret not in row["text"]
    assert random_part not in row["text"]
    assert row["token_hash"] != secret
    assert len(row["token_hash"]) == 64
    # nor anywhere else the service writes: audit log, outbox
    for query in (
        "SELECT count(*) FROM auth.audit_entry WHERE details::text LIKE '%' || $1 || '%'",
        "SELECT count(*) FROM auth.outbox"
        " WHERE convert_from(payload, 'UTF8') LIKE '%' || $1 || '%'",
    ):
        assert await db.fetchval(query, random_part) == 0


async def test_exchange_gives_an_access_token_with_the_owners_rights(auth: AuthHarness) -> None:
    pi_id, pi_email = await auth.user("pi")
    pi = await auth.login(pi_email)
    project = await auth.call("projects.create", {"name": f"API {pi_id}"}, token=pi)
    created = await _create(auth, pi, "ci")

    pair = await auth.call("exchange_api_token", {"api_token": created["token"]})

    assert pair["refresh_token"] is None
    principal = auth.app.verifier.verify(pair["access_token"])
    assert str(principal.user_id) == pi_id
    assert principal.roles == frozenset({"pi"})
    assert principal.projects == {uuid.UUID(project["id"]): "pi"}
    me = await auth.call("me", token=pair["access_token"])
    assert me["id"] == pi_id
    # the token acts with those rights: the PI's project is visible, admin operations are not
    got = await auth.call("projects.get", {"project_id": project["id"]}, token=pair["access_token"])
    assert got["id"] == project["id"]
    forbidden = await auth.refused("users.list", {}, token=pair["access_token"])
    assert forbidden.status == 403


async def test_last_used_time_updates(auth: AuthHarness) -> None:
    _, email = await auth.user()
    access = await auth.login(email)
    created = await _create(auth, access, "cron")

    before = datetime.now(UTC) - timedelta(seconds=5)
    await auth.call("exchange_api_token", {"api_token": created["token"]})
    first = (await auth.call("api_tokens.list", token=access))[0]["last_used_at"]
    assert first is not None
    first_at = datetime.fromisoformat(first)
    assert before <= first_at <= datetime.now(UTC) + timedelta(seconds=5)

    await asyncio.sleep(0.05)
    await auth.call("exchange_api_token", {"api_token": created["token"]})
    second = (await auth.call("api_tokens.list", token=access))[0]["last_used_at"]
    assert datetime.fromisoformat(second) > first_at


async def test_revoke_stops_the_exchange(auth: AuthHarness) -> None:
    _, email = await auth.user()
    access = await auth.login(email)
    created = await _create(auth, access, "to revoke")
    assert await auth.call("exchange_api_token", {"api_token": created["token"]})

    revoked = await auth.call("api_tokens.revoke", {"token_id": created["id"]}, token=access)

    assert revoked["revoked_at"] is not None
    assert "token" not in revoked
    error = await auth.refused("exchange_api_token", {"api_token": created["token"]})
    assert error.status == 401
    assert error.code == "invalid_api_token"
    again = await auth.refused("api_tokens.revoke", {"token_id": created["id"]}, token=access)
    assert again.status == 404
    # the name is free again for a new live token
    replacement = await _create(auth, access, "to revoke")
    assert replacement["id"] != created["id"]


async def test_a_live_name_is_unique_per_user(auth: AuthHarness) -> None:
    _, email = await auth.user()
    _, other_email = await auth.user()
    access = await auth.login(email)
    await _create(auth, access, "dup")
    error = await auth.refused("api_tokens.create", {"name": "dup"}, token=access)
    assert error.status == 409
    assert error.field == "name"
    assert len(await auth.call("api_tokens.list", token=access)) == 1
    # another user may use the same name
    assert (await _create(auth, await auth.login(other_email), "dup"))["name"] == "dup"


async def test_another_user_cannot_revoke_or_see_it(auth: AuthHarness) -> None:
    _, owner_email = await auth.user()
    _, other_email = await auth.user("pi")
    owner = await auth.login(owner_email)
    other = await auth.login(other_email)
    created = await _create(auth, owner, "mine")

    error = await auth.refused("api_tokens.revoke", {"token_id": created["id"]}, token=other)

    assert error.status == 404
    assert await auth.call("api_tokens.list", token=other) == []
    listed = await auth.call("api_tokens.list", token=owner)
    assert listed[0]["revoked_at"] is None
    assert await auth.call("exchange_api_token", {"api_token": created["token"]})
    # an admin may revoke anyone's
    revoked = await auth.call(
        "api_tokens.revoke", {"token_id": created["id"]}, token=auth.tokens["admin"]
    )
    assert revoked["revoked_at"] is not None


async def test_unknown_and_expired_tokens_are_refused(auth: AuthHarness) -> None:
    _, email = await auth.user()
    access = await auth.login(email)
    soon = datetime.now(UTC) + timedelta(seconds=1)
    short = await _create(auth, access, "short", expires_at=soon.isoformat())
    assert await auth.call("exchange_api_token", {"api_token": short["token"]})
    await asyncio.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.1)

    expired = await auth.refused("exchange_api_token", {"api_token": short["token"]})
    unknown = await auth.refused("exchange_api_token", {"api_token": "cgt_" + uuid.uuid4().hex})
    assert expired.status == unknown.status == 401
    assert expired.message == unknown.message


async def test_a_disabled_users_api_token_stops_working(auth: AuthHarness) -> None:
    user_id, email = await auth.user()
    access = await auth.login(email)
    created = await _create(auth, access, "script")
    pair = await auth.call("exchange_api_token", {"api_token": created["token"]})

    await auth.call("users.disable", {"user_id": user_id}, token=auth.tokens["admin"])

    error = await auth.refused("exchange_api_token", {"api_token": created["token"]})
    assert error.status == 401
    # the access token it gave before is refused as soon as the disable is published
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        try:
            auth.app.verifier.verify(pair["access_token"])
        except Unauthorized:
            break
        assert asyncio.get_running_loop().time() < deadline, "token still accepted"
        await asyncio.sleep(0.05)

    # enabling the account again makes the token usable again
    await auth.call("users.enable", {"user_id": user_id}, token=auth.tokens["admin"])
    renewed = await auth.call("exchange_api_token", {"api_token": created["token"]})
    assert str(auth.app.verifier.verify(renewed["access_token"]).user_id) == user_id


async def test_api_tokens_need_a_login(auth: AuthHarness) -> None:
    error = await auth.refused("api_tokens.create", {"name": "anonymous"})
    assert error.status == 401
    error = await auth.refused("api_tokens.list", {})
    assert error.status == 401
