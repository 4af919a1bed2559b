"""Access follows the account as it is now: project roles changed after a token was signed, and
sessions or API tokens ended before it expired, are seen by every service's verifier."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from nats.js.errors import KeyNotFoundError

from compgrid_auth.adapters.published import publish_revoked, sweep_revoked
from compgrid_auth.use_cases import projects as projects_uc
from compgrid_runtime.errors import Unauthorized
from compgrid_runtime.tokens import (
    KEYS_BUCKET,
    PROJECTS_PREFIX,
    TokenVerifier,
)
from tests.auth.integration.conftest import AuthHarness

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis]


async def _until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not true after {timeout_s} s")
        await asyncio.sleep(0.02)


def _role(verifier: TokenVerifier, token: str, project_id: str) -> str | None:
    return verifier.verify(token).project_role(uuid.UUID(project_id))


def _refused(verifier: TokenVerifier, token: str) -> bool:
    try:
        verifier.verify(token)
    except Unauthorized:
        return True
    return False


async def _pair(auth: AuthHarness, email: str) -> dict[str, Any]:
    pair = await auth.call("login", {"email": email, "password": "a perfectly fine passphrase"})
    assert isinstance(pair, dict)
    return pair


# --- project roles --------------------------------------------------------------------------


async def test_a_project_created_after_sign_in_is_in_reach_of_the_same_token(
    auth: AuthHarness, remote_verifier: TokenVerifier
) -> None:
    pi_id, pi_email = await auth.user("pi")
    token = await auth.login(pi_email)
    assert remote_verifier.verify(token).projects == {}

    project = await auth.call("projects.create", {"name": f"Now {pi_id}"}, token=token)

    await _until(lambda: _role(remote_verifier, token, project["id"]) == "pi", timeout_s=1.0)


async def test_a_removed_member_loses_the_project_before_the_token_expires(
    auth: AuthHarness, remote_verifier: TokenVerifier
) -> None:
    member_id, member_email = await auth.user()
    _, pi_email = await auth.user("pi")
    pi = await auth.login(pi_email)
    project = await auth.call("projects.create", {"name": f"Leave {member_id}"}, token=pi)
    ref = {"project_id": project["id"], "user_id": member_id}
    await auth.call("projects.add_member", ref, token=pi)
    token = await auth.login(member_email)
    assert _role(remote_verifier, token, project["id"]) == "member"

    await auth.call("projects.remove_member", ref, token=pi)

    await _until(lambda: _role(remote_verifier, token, project["id"]) is None, timeout_s=1.0)
    assert remote_verifier.verify(token).projects == {}


async def test_roles_are_published_from_the_events_when_the_direct_publish_is_lost(
    auth: AuthHarness, remote_verifier: TokenVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def lost(*_: Any) -> None:
        """A crash (or bus outage) right after the commit."""

    monkeypatch.setattr(projects_uc, "publish_access", lost)
    member_id, member_email = await auth.user()
    _, pi_email = await auth.user("pi")
    pi = await auth.login(pi_email)
    token = await auth.login(member_email)
    project = await auth.call("projects.create", {"name": f"Lost {member_id}"}, token=pi)

    await auth.call(
        "projects.add_member", {"project_id": project["id"], "user_id": member_id}, token=pi
    )

    await _until(lambda: _role(remote_verifier, token, project["id"]) == "member", timeout_s=15.0)
    kv = await auth.nc.jetstream().key_value(KEYS_BUCKET)
    entry = await kv.get(f"{PROJECTS_PREFIX}{member_id}")
    assert entry.value is not None
    assert json.loads(entry.value) == {project["id"]: "member"}


# --- ended sessions -------------------------------------------------------------------------


async def test_logout_ends_the_sessions_access_tokens_everywhere(
    auth: AuthHarness, remote_verifier: TokenVerifier
) -> None:
    _, email = await auth.user()
    other = await _pair(auth, email)
    pair = await _pair(auth, email)
    renewed = await auth.call("refresh", {"refresh_token": pair["refresh_token"]})
    for token in (pair["access_token"], renewed["access_token"], other["access_token"]):
        assert not _refused(remote_verifier, token)

    await auth.call("logout", {"refresh_token": renewed["refresh_token"]})

    await _until(lambda: _refused(remote_verifier, pair["access_token"]))
    await _until(lambda: _refused(auth.app.verifier, pair["access_token"]))
    for verifier in (remote_verifier, auth.app.verifier):
        assert _refused(verifier, renewed["access_token"])
        assert not _refused(verifier, other["access_token"])  # another device's session
    assert (await auth.refused("me", {}, token=renewed["access_token"])).status == 401


async def test_revoking_an_api_token_ends_the_access_tokens_obtained_with_it(
    auth: AuthHarness, remote_verifier: TokenVerifier
) -> None:
    _, email = await auth.user()
    access = await auth.login(email)
    kept = await auth.call("api_tokens.create", {"name": "kept"}, token=access)
    gone = await auth.call("api_tokens.create", {"name": "gone"}, token=access)
    kept_access = (await auth.call("exchange_api_token", {"api_token": kept["token"]}))[
        "access_token"
    ]
    gone_access = (await auth.call("exchange_api_token", {"api_token": gone["token"]}))[
        "access_token"
    ]
    assert not _refused(remote_verifier, gone_access)

    await auth.call("api_tokens.revoke", {"token_id": gone["id"]}, token=access)

    await _until(lambda: _refused(remote_verifier, gone_access))
    assert not _refused(remote_verifier, kept_access)
    assert not _refused(remote_verifier, access)  # the signed-in session is another one


async def test_a_stolen_refresh_token_ends_the_familys_access_tokens(
    auth: AuthHarness, remote_verifier: TokenVerifier
) -> None:
    _, email = await auth.user()
    first = await _pair(auth, email)
    second = await auth.call("refresh", {"refresh_token": first["refresh_token"]})

    await auth.refused("refresh", {"refresh_token": first["refresh_token"]})  # reused

    await _until(lambda: _refused(remote_verifier, second["access_token"]))


async def test_a_password_change_ends_the_other_sessions_access_tokens(
    auth: AuthHarness, remote_verifier: TokenVerifier
) -> None:
    _, email = await auth.user()
    other = await _pair(auth, email)
    mine = await _pair(auth, email)
    change = {
        "current_password": "a perfectly fine passphrase",
        "new_password": "a different fine passphrase 9",
    }

    await auth.call("change_password", change, token=mine["access_token"])

    await _until(lambda: _refused(remote_verifier, other["access_token"]))
    assert not _refused(remote_verifier, mine["access_token"])


async def test_revocations_are_swept_once_their_tokens_have_expired(
    auth: AuthHarness, remote_verifier: TokenVerifier
) -> None:
    js = auth.nc.jetstream()
    kv = await js.key_value(KEYS_BUCKET)
    old, live = uuid.uuid4(), uuid.uuid4()
    await publish_revoked(js, old, time.time() - 1)
    await publish_revoked(js, live, time.time() + 600)

    assert await sweep_revoked(js, time.time()) >= 1

    with pytest.raises(KeyNotFoundError):
        await kv.get(f"revoked.{old}")
    assert (await kv.get(f"revoked.{live}")).value is not None
