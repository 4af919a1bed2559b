"""Sessions: login, rotating refresh tokens, logout and disabled accounts (throttling: see
test_login_throttling.py)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

import asyncpg
import jwt
import pytest

from compgrid_auth.use_cases.sessions import LOGIN_FAILED
from compgrid_runtime.errors import Unauthorized
from compgrid_runtime.tokens import TokenVerifier
from tests.auth.integration.conftest import PASSWORD, AuthHarness
from tests.harness.servers import Servers

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis]


def _address() -> str:
    """A client address of this test alone (documentation ranges, random host part)."""
    n = uuid.uuid4().int
    return f"10.{n % 250}.{(n >> 8) % 250}.{(n >> 16) % 250}"


def _pg_url(real: Servers) -> str:
    return real.database_url.replace("postgresql+asyncpg://", "postgresql://")


async def _login_pair(
    auth: AuthHarness, email: str, password: str = PASSWORD, address: str | None = None
) -> dict[str, Any]:
    pair = await auth.call(
        "login", {"email": email, "password": password}, address=address or _address()
    )
    assert isinstance(pair, dict)
    return pair


async def _eventually_refused(verifier: TokenVerifier, token: str, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            verifier.verify(token)
        except Unauthorized:
            return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail("the verifier still accepts the token")
        await asyncio.sleep(0.05)


async def _eventually_accepted(verifier: TokenVerifier, token: str, timeout_s: float = 5.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            return verifier.verify(token)
        except Unauthorized:
            if asyncio.get_running_loop().time() > deadline:
                raise
        await asyncio.sleep(0.05)


# --- login ------------------------------------------------------------------------------------


async def test_login_returns_a_signed_access_token_and_a_refresh_token(auth: AuthHarness) -> None:
    pi_id, pi_email = await auth.user("pi")
    pi = await auth.login(pi_email)
    project = await auth.call("projects.create", {"name": f"Sess {pi_id}"}, token=pi)

    pair = await _login_pair(auth, pi_email)

    assert pair["token_type"] == "Bearer"
    assert isinstance(pair["refresh_token"], str)
    assert len(pair["refresh_token"]) >= 40
    header = jwt.get_unverified_header(pair["access_token"])
    assert header["alg"] in ("EdDSA", "ES256")
    jwks = await auth.published_jwks()
    jwk = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    key = jwt.PyJWK.from_dict(jwk, algorithm=header["alg"])
    claims = jwt.decode(
        pair["access_token"],
        key.key,
        algorithms=["EdDSA", "ES256"],
        audience="compgrid",
        issuer="compgrid",
    )
    assert claims["sub"] == pi_id
    assert claims["roles"] == ["pi"]
    assert claims["projects"] == {project["id"]: "pi"}
    assert isinstance(claims["jti"], str)
    assert claims["jti"]
    assert 0 < claims["exp"] - claims["iat"] <= auth.deps.settings.access_ttl_s
    # two logins never share a token id
    again = await _login_pair(auth, pi_email)
    assert (
        jwt.decode(again["access_token"], options={"verify_signature": False})["jti"]
        != (claims["jti"])
    )
    assert again["refresh_token"] != pair["refresh_token"]


async def test_login_email_is_case_insensitive(auth: AuthHarness) -> None:
    user_id, email = await auth.user()
    pair = await _login_pair(auth, f"  {email.upper()} ")
    principal = auth.app.verifier.verify(pair["access_token"])
    assert str(principal.user_id) == user_id


async def test_refresh_tokens_are_stored_hashed(auth: AuthHarness, db: asyncpg.Connection) -> None:
    user_id, email = await auth.user()
    pair = await _login_pair(auth, email)
    rows = await db.fetch(
        "SELECT row_to_json(r)::text AS t FROM auth.refresh_token r WHERE user_id = $1",
        uuid.UUID(user_id),
    )
    assert len(rows) == 1
    assert pair["refresh_token"] not in rows[0]["t"]
    assert hashlib.sha256(pair["refresh_token"].encode()).hexdigest() in rows[0]["t"]


async def test_wrong_password_unknown_email_and_disabled_user_get_the_same_error(
    auth: AuthHarness,
) -> None:
    user_id, email = await auth.user()
    disabled_id, disabled_email = await auth.user()
    await auth.call("users.disable", {"user_id": disabled_id}, token=auth.tokens["admin"])

    wrong = await auth.refused(
        "login", {"email": email, "password": "not the password at all"}, address=_address()
    )
    unknown = await auth.refused(
        "login",
        {"email": f"nobody-{uuid.uuid4().hex}@example.org", "password": PASSWORD},
        address=_address(),
    )
    disabled = await auth.refused(
        "login", {"email": disabled_email, "password": PASSWORD}, address=_address()
    )
    overlong = await auth.refused(
        "login", {"email": email, "password": "x" * 500}, address=_address()
    )

    for error in (wrong, unknown, disabled, overlong):
        assert error.status == 401
        assert error.code == "login_failed"
        assert error.message == LOGIN_FAILED
        assert error.field is None
    # the account itself is fine: the right password still works
    assert auth.app.verifier.verify(await auth.login(email)).user_id == uuid.UUID(user_id)


# --- refresh ----------------------------------------------------------------------------------


async def test_refresh_rotates_and_the_old_token_is_refused(auth: AuthHarness) -> None:
    user_id, email = await auth.user()
    first = await _login_pair(auth, email)

    second = await auth.call("refresh", {"refresh_token": first["refresh_token"]})

    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert str(auth.app.verifier.verify(second["access_token"]).user_id) == user_id
    error = await auth.refused("refresh", {"refresh_token": first["refresh_token"]})
    assert error.status == 401
    assert error.code == "invalid_refresh_token"


async def test_reusing_a_rotated_refresh_token_revokes_the_whole_family(auth: AuthHarness) -> None:
    _, email = await auth.user()
    other_device = await _login_pair(auth, email)
    first = await _login_pair(auth, email)
    second = await auth.call("refresh", {"refresh_token": first["refresh_token"]})
    third = await auth.call("refresh", {"refresh_token": second["refresh_token"]})

    stolen = await auth.refused("refresh", {"refresh_token": first["refresh_token"]})
    assert stolen.status == 401

    # the newest token of the family is dead too
    error = await auth.refused("refresh", {"refresh_token": third["refresh_token"]})
    assert error.status == 401
    # another session (another family) of the same account is not affected
    kept = await auth.call("refresh", {"refresh_token": other_device["refresh_token"]})
    assert kept["refresh_token"]


async def test_refresh_carries_current_memberships(auth: AuthHarness) -> None:
    member_id, member_email = await auth.user()
    _, pi_email = await auth.user("pi")
    pi = await auth.login(pi_email)
    pair = await _login_pair(auth, member_email)
    assert auth.app.verifier.verify(pair["access_token"]).projects == {}
    project = await auth.call("projects.create", {"name": f"Fresh {member_id}"}, token=pi)
    await auth.call(
        "projects.add_member", {"project_id": project["id"], "user_id": member_id}, token=pi
    )

    renewed = await auth.call("refresh", {"refresh_token": pair["refresh_token"]})

    principal = auth.app.verifier.verify(renewed["access_token"])
    assert principal.projects == {uuid.UUID(project["id"]): "member"}


async def test_expired_and_unknown_refresh_tokens_are_refused(
    auth: AuthHarness, db: asyncpg.Connection
) -> None:
    _, email = await auth.user()
    pair = await _login_pair(auth, email)
    await db.execute(
        "UPDATE auth.refresh_token SET expires_at = now() - interval '1 second'"
        " WHERE token_hash = $1",
        hashlib.sha256(pair["refresh_token"].encode()).hexdigest(),
    )
    expired = await auth.refused("refresh", {"refresh_token": pair["refresh_token"]})
    unknown = await auth.refused("refresh", {"refresh_token": "cgr_" + uuid.uuid4().hex})
    assert expired.status == unknown.status == 401
    assert expired.message == unknown.message


# --- logout -----------------------------------------------------------------------------------


async def test_logout_revokes_the_session(auth: AuthHarness) -> None:
    _, email = await auth.user()
    other = await _login_pair(auth, email)
    pair = await _login_pair(auth, email)
    rotated = await auth.call("refresh", {"refresh_token": pair["refresh_token"]})

    assert await auth.call("logout", {"refresh_token": rotated["refresh_token"]}) == {
        "logged_out": True
    }

    error = await auth.refused("refresh", {"refresh_token": rotated["refresh_token"]})
    assert error.status == 401
    # the other device stays logged in
    assert (await auth.call("refresh", {"refresh_token": other["refresh_token"]}))["access_token"]
    # an unknown token gets the same answer (nothing to learn)
    assert await auth.call("logout", {"refresh_token": "cgr_" + uuid.uuid4().hex}) == {
        "logged_out": True
    }


# --- disabled accounts ------------------------------------------------------------------------


async def test_disabled_user_is_shut_out_everywhere(
    auth: AuthHarness, remote_verifier: TokenVerifier
) -> None:
    user_id, email = await auth.user()
    pair = await _login_pair(auth, email)
    access = pair["access_token"]
    principal = await _eventually_accepted(remote_verifier, access)
    assert str(principal.user_id) == user_id
    assert (await auth.call("me", token=access))["id"] == user_id

    disabled = await auth.call(
        "users.disable", {"user_id": user_id, "reason": "left"}, token=auth.tokens["admin"]
    )
    assert disabled["status"] == "disabled"

    # another service's verifier refuses the still-unexpired access token
    await _eventually_refused(remote_verifier, access)
    # so does the auth service itself
    await _eventually_refused(auth.app.verifier, access)
    error = await auth.refused("me", {}, token=access)
    assert error.status == 401
    # refresh is refused
    error = await auth.refused("refresh", {"refresh_token": pair["refresh_token"]})
    assert error.status == 401

    # enabling again lets new logins work; the new token verifies everywhere
    await auth.call("users.enable", {"user_id": user_id}, token=auth.tokens["admin"])
    fresh = await auth.login(email)
    assert str((await _eventually_accepted(remote_verifier, fresh)).user_id) == user_id
    # the family revoked while disabled stays revoked
    error = await auth.refused("refresh", {"refresh_token": pair["refresh_token"]})
    assert error.status == 401


async def test_admin_cannot_disable_themselves(auth: AuthHarness) -> None:
    admin_id, admin_email = await auth.user("admin")
    token = await auth.login(admin_email)
    error = await auth.refused("users.disable", {"user_id": admin_id}, token=token)
    assert error.status == 409
    me = await auth.call("me", token=token)
    assert me["status"] == "active"


async def test_good_logins_do_not_use_up_an_address(auth: AuthHarness) -> None:
    # A lab behind one NAT address logs in all day; only failures may count against it.
    _, email = await auth.user()
    address = _address()
    for _ in range(25):
        assert await auth.login(email, address=address)
