"""Accounts and passwords: validation, registration, invitations, resets, changes, atomicity."""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from email.message import Message
from typing import Any

import asyncpg
import pytest

from compgrid_events.rpc import RpcReply, RpcRequest
from compgrid_runtime.errors import DomainError
from tests.auth.integration.conftest import PASSWORD, AuthHarness

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis]

NEW_PASSWORD = "another quite long passphrase"
SQL_NAME = "Robert'); DROP TABLE user_account;--"
HTML_NAME = "<script>alert(1)</script>"
TOKEN = re.compile(r"cgo_[A-Za-z0-9_-]+")


def _email(tag: str = "u") -> str:
    return f"{tag}-{uuid.uuid4().hex[:12]}@example.org"


def _address() -> str:
    n = uuid.uuid4().int
    return f"172.{16 + n % 16}.{(n >> 8) % 250}.{(n >> 16) % 250}"


async def _create(auth: AuthHarness, email: str, password: str = PASSWORD, **extra: Any) -> Any:
    body = {"email": email, "display_name": "Someone", "password": password, **extra}
    return await auth.call("users.create", body, token=auth.tokens["admin"])


def _bodies(message: Message) -> list[tuple[str, str]]:
    """Return (content type, decoded text) of every text part."""
    parts = []
    for part in message.walk():
        if part.get_content_maintype() == "text":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            parts.append(
                (part.get_content_type(), payload.decode(part.get_content_charset("utf-8")))
            )
    return parts


def _token_in(message: Message) -> str:
    for _, text in _bodies(message):
        if found := TOKEN.search(text):
            return found.group(0)
    raise AssertionError("no token in the mail")


async def _counts(db: asyncpg.Connection) -> tuple[int, int, int]:
    return (
        await db.fetchval("SELECT count(*) FROM auth.user_account"),
        await db.fetchval("SELECT count(*) FROM auth.audit_entry"),
        await db.fetchval("SELECT count(*) FROM auth.outbox"),
    )


async def _login_refused(auth: AuthHarness, email: str, password: str) -> None:
    error = await auth.refused("login", {"email": email, "password": password}, address=_address())
    assert error.status == 401


# --- creating accounts ------------------------------------------------------------------------


async def test_duplicate_email_is_a_conflict_case_insensitively(
    auth: AuthHarness, db: asyncpg.Connection
) -> None:
    email = _email("dup")
    await _create(auth, email)
    before = await _counts(db)

    for variant in (email, email.upper(), email.capitalize()):
        error = await auth.refused(
            "users.create",
            {"email": variant, "display_name": "Twin", "password": PASSWORD},
            token=auth.tokens["admin"],
        )
        assert error.status == 409
        assert error.code == "email_taken"
        assert error.field == "email"
        assert "email" in error.message
        assert "exists" in error.message

    # nothing half-written: no account, no audit entry, no outbox row
    assert await _counts(db) == before
    assert (
        await db.fetchval("SELECT count(*) FROM auth.user_account WHERE lower(email) = $1", email)
        == 1
    )


async def test_emails_are_stored_lower_case(auth: AuthHarness) -> None:
    email = _email("Mixed").replace("Mixed", "MiXeD")
    created = await _create(auth, email)
    assert created["email"] == email.lower()
    assert await auth.login(email.lower())


@pytest.mark.parametrize(
    ("password", "says"),
    [
        ("short", "at least 12"),
        ("abababababababab", "5 different"),
        ("password1234", "too easy"),
        ("PASSWORD1234", "too easy"),
        ("x" * 129 + "abcd", "at most 128"),
        ("é" * 600 + "abcd", "at most 128"),
    ],
)
async def test_weak_and_overlong_passwords_are_refused_clearly(
    auth: AuthHarness, db: asyncpg.Connection, password: str, says: str
) -> None:
    email = _email("weak")
    before = await _counts(db)
    error = await auth.refused(
        "users.create",
        {"email": email, "display_name": "Weak", "password": password},
        token=auth.tokens["admin"],
    )
    assert error.status == 422
    assert error.field == "password"
    assert says in error.message
    assert await _counts(db) == before


async def test_password_equal_to_the_email_is_refused(auth: AuthHarness) -> None:
    email = _email("same")
    error = await auth.refused(
        "users.create",
        {"email": email, "display_name": "Same", "password": email.upper()},
        token=auth.tokens["admin"],
    )
    assert error.status == 422
    assert error.field == "password"


async def test_overlong_passwords_are_refused_before_hashing(
    auth: AuthHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed: list[int] = []
    real_hash = auth.deps.hasher.hash
    real_verify = auth.deps.hasher.verify

    async def spy_hash(password: str) -> str:
        hashed.append(len(password))
        return await real_hash(password)

    async def spy_verify(password_hash: str | None, password: str) -> bool:
        hashed.append(len(password))
        return await real_verify(password_hash, password)

    monkeypatch.setattr(auth.deps.hasher, "hash", spy_hash)
    monkeypatch.setattr(auth.deps.hasher, "verify", spy_verify)

    # within the contract's cap but over the policy's: refused by the policy, no hash
    error = await auth.refused(
        "users.create",
        {"email": _email("long"), "display_name": "Long", "password": "ab1-" * 250},
        token=auth.tokens["admin"],
    )
    assert error.status == 422
    assert "at most 128" in error.message
    # over the contract's cap
    error = await auth.refused(
        "users.create",
        {"email": _email("long"), "display_name": "Long", "password": "ab1-" * 600},
        token=auth.tokens["admin"],
    )
    assert error.status == 422
    assert error.field == "password"

    # 1 MB does not fit in one NATS message, so hand the request straight to the rpc server
    route = next(r for r in auth.app.rpc.routes if r.subject == "rpc.auth.users.create")
    request = RpcRequest(
        token=auth.tokens["admin"],
        body={"email": _email("huge"), "display_name": "Huge", "password": "ab1-" * 262_144},
    )
    started = time.perf_counter()
    reply: RpcReply = await auth.app.rpc.handle(route, request.model_dump_json().encode())
    elapsed = time.perf_counter() - started
    assert not reply.ok
    assert reply.error is not None
    assert reply.error.status == 422
    assert reply.error.field == "password"
    assert elapsed < 0.5

    # logins with an overlong password are refused without a hash either
    login = next(r for r in auth.app.rpc.routes if r.subject == "rpc.auth.login")
    request = RpcRequest(body={"email": _email("huge"), "password": "ab1-" * 262_144})
    reply = await auth.app.rpc.handle(login, request.model_dump_json().encode())
    assert not reply.ok
    assert reply.error is not None
    assert reply.error.status in (401, 422)
    assert hashed == []


@pytest.mark.parametrize(
    "email", ["not-an-email", "a@b", "two@@example.org", "sp ace@example.org", "x@localhost"]
)
async def test_invalid_emails_are_refused(auth: AuthHarness, email: str) -> None:
    error = await auth.refused(
        "users.create",
        {"email": email, "display_name": "Bad", "password": PASSWORD},
        token=auth.tokens["admin"],
    )
    assert error.status == 422
    assert error.field == "email"
    assert error.message.startswith("email")


async def test_only_admins_create_users(auth: AuthHarness) -> None:
    _, pi_email = await auth.user("pi")
    pi = await auth.login(pi_email)
    email = _email()
    error = await auth.refused(
        "users.create",
        {"email": email, "display_name": "X", "password": PASSWORD, "roles": ["admin"]},
        token=pi,
    )
    assert error.status == 403
    await _login_refused(auth, email, PASSWORD)


# --- self-registration ------------------------------------------------------------------------


async def test_self_registration_follows_the_admin_setting(auth: AuthHarness) -> None:
    admin = auth.tokens["admin"]
    original = await auth.call("settings.get", token=admin)
    try:
        assert await auth.call("settings.update", {"self_registration": False}, token=admin) == {
            "self_registration": False
        }
        email = _email("reg")
        body = {"email": email, "display_name": "Newcomer", "password": PASSWORD}
        closed = await auth.refused("register", body)
        assert closed.status == 403
        assert closed.code == "registration_closed"
        await _login_refused(auth, email, PASSWORD)

        await auth.call("settings.update", {"self_registration": True}, token=admin)
        assert (await auth.call("settings.get", token=admin))["self_registration"] is True
        user = await auth.call("register", body)
        assert user["email"] == email
        assert user["roles"] == ["member"]
        assert user["status"] == "active"
        me = await auth.call("me", token=await auth.login(email))
        assert me["id"] == user["id"]

        # nobody registers themselves into a role, or twice
        escalate = await auth.refused("register", {**body, "email": _email(), "roles": ["admin"]})
        assert escalate.status == 422
        twice = await auth.refused("register", {**body, "email": email.upper()})
        assert twice.status == 409
        weak = await auth.refused("register", {**body, "email": _email(), "password": "weak"})
        assert weak.status == 422
    finally:
        await auth.call("settings.update", original, token=admin)


async def test_only_admins_change_settings(auth: AuthHarness) -> None:
    _, email = await auth.user("pi")
    error = await auth.refused(
        "settings.update", {"self_registration": True}, token=await auth.login(email)
    )
    assert error.status == 403


# --- invitations ------------------------------------------------------------------------------


async def _project(auth: AuthHarness, name: str | None = None) -> tuple[str, dict[str, Any]]:
    pi_id, pi_email = await auth.user("pi")
    pi = await auth.login(pi_email)
    project = await auth.call("projects.create", {"name": name or f"Inv {pi_id}"}, token=pi)
    return pi, project


async def test_invitation_mails_a_token_that_creates_the_member(auth: AuthHarness) -> None:
    pi, project = await _project(auth)
    email = _email("invitee")

    invited = await auth.call(
        "projects.invite", {"project_id": project["id"], "email": email}, token=pi
    )

    assert invited["invited"] is True
    mails = auth.inbox.to(email)
    assert len(mails) == 1
    token = _token_in(mails[0])
    await _login_refused(auth, email, PASSWORD)  # not usable before accepting

    accepted = await auth.call(
        "accept_invitation", {"token": token, "display_name": "Ada Invited", "password": PASSWORD}
    )

    assert accepted == {"user_id": invited["user_id"], "email": email}
    access = await auth.login(email)
    me = await auth.call("me", token=access)
    assert me["display_name"] == "Ada Invited"
    assert me["status"] == "active"
    assert me["projects"] == {project["id"]: "member"}
    detail = await auth.call("projects.get", {"project_id": project["id"]}, token=access)
    assert detail["members"][invited["user_id"]] == "member"

    # the token works once
    again = await auth.refused(
        "accept_invitation", {"token": token, "display_name": "X", "password": NEW_PASSWORD}
    )
    assert again.status == 401
    assert await auth.login(email)  # the password did not change


async def test_a_weak_password_does_not_use_up_the_invitation(auth: AuthHarness) -> None:
    pi, project = await _project(auth)
    email = _email("invitee")
    await auth.call("projects.invite", {"project_id": project["id"], "email": email}, token=pi)
    token = _token_in(auth.inbox.to(email)[0])

    weak = await auth.refused(
        "accept_invitation", {"token": token, "display_name": "W", "password": "short"}
    )
    assert weak.status == 422

    await auth.call(
        "accept_invitation", {"token": token, "display_name": "W", "password": PASSWORD}
    )
    assert await auth.login(email)


async def test_the_invitation_subject_says_who_invited_whom_to_what(auth: AuthHarness) -> None:
    pi_email = _email("ada")
    await _create(auth, pi_email, display_name="Ada Lovelace", roles=["pi"])
    pi = await auth.login(pi_email)
    name = f"Demo Lab {uuid.uuid4().hex[:6]}"
    project = await auth.call("projects.create", {"name": name}, token=pi)
    newcomer = _email("newcomer")
    _, existing = await auth.user()

    for email in (newcomer, existing):
        await auth.call("projects.invite", {"project_id": project["id"], "email": email}, token=pi)

    [invitation] = auth.inbox.to(newcomer)
    assert invitation["Subject"] == f"Ada Lovelace invited you to join {name} on CompGrid"
    [added] = auth.inbox.to(existing)
    assert added["Subject"] == f"Ada Lovelace added you to {name} on CompGrid"
    assert any("Ada Lovelace" in text for _, text in _bodies(invitation))


async def test_a_disabled_invitee_cannot_activate_the_account_by_accepting(
    auth: AuthHarness,
) -> None:
    pi, project = await _project(auth)
    email = _email("invitee")
    invited = await auth.call(
        "projects.invite", {"project_id": project["id"], "email": email}, token=pi
    )
    token = _token_in(auth.inbox.to(email)[0])
    await auth.call("users.disable", {"user_id": invited["user_id"]}, token=auth.tokens["admin"])

    with pytest.raises(DomainError) as refused:
        await auth.call(
            "accept_invitation", {"token": token, "display_name": "Sneaky", "password": PASSWORD}
        )
    assert refused.value.status == 401

    listed = await auth.call("users.list", {"query": email}, token=auth.tokens["admin"])
    assert [u["status"] for u in listed["items"]] == ["disabled"]
    await _login_refused(auth, email, PASSWORD)


async def test_inviting_a_disabled_account_does_not_add_it(auth: AuthHarness) -> None:
    pi, project = await _project(auth)
    user_id, email = await auth.user()
    await auth.call("users.disable", {"user_id": user_id}, token=auth.tokens["admin"])

    with pytest.raises(DomainError) as refused:
        await auth.call("projects.invite", {"project_id": project["id"], "email": email}, token=pi)
    assert refused.value.status == 409  # as projects.add_member answers for a disabled account

    detail = await auth.call("projects.get", {"project_id": project["id"]}, token=pi)
    assert user_id not in detail["members"]


async def test_a_failed_invitation_mail_leaves_nothing_behind(
    auth: AuthHarness, db: asyncpg.Connection
) -> None:
    pi, project = await _project(auth)
    email = _email("unlucky")
    before = await _counts(db)
    auth.inbox.refuse = True
    try:
        with pytest.raises(DomainError) as failed:
            await auth.call(
                "projects.invite", {"project_id": project["id"], "email": email}, token=pi
            )
    finally:
        auth.inbox.refuse = False
    assert failed.value.status >= 500

    assert await _counts(db) == before
    assert await db.fetchval("SELECT count(*) FROM auth.user_account WHERE email = $1", email) == 0
    assert (
        await db.fetchval(
            "SELECT count(*) FROM auth.one_time_token t JOIN auth.membership m"
            " ON m.user_id = t.user_id WHERE m.project_id = $1",
            uuid.UUID(project["id"]),
        )
        == 0
    )
    detail = await auth.call("projects.get", {"project_id": project["id"]}, token=pi)
    assert list(detail["members"].values()) == ["pi"]
    # and a retry once the mail server is back works
    retried = await auth.call(
        "projects.invite", {"project_id": project["id"], "email": email}, token=pi
    )
    assert retried["invited"] is True
    assert len(auth.inbox.to(email)) == 1


# --- password reset ---------------------------------------------------------------------------


async def _reset_token(auth: AuthHarness, email: str) -> str:
    await auth.call("request_password_reset", {"email": email})
    mails = auth.inbox.to(email)
    assert mails, "no reset mail"
    return _token_in(mails[-1])


async def test_reset_request_answers_the_same_for_unknown_emails(auth: AuthHarness) -> None:
    _, email = await auth.user()
    disabled_id, disabled_email = await auth.user()
    await auth.call("users.disable", {"user_id": disabled_id}, token=auth.tokens["admin"])
    unknown = _email("ghost")

    known = await auth.call("request_password_reset", {"email": email})
    for other in (unknown, disabled_email, "not-an-email", email.upper()):
        assert await auth.call("request_password_reset", {"email": other}) == known

    assert len(auth.inbox.to(email)) == 2  # the address and its upper-case spelling
    assert auth.inbox.to(unknown) == []
    assert auth.inbox.to(disabled_email) == []


async def test_reset_token_sets_a_new_password_once(
    auth: AuthHarness, db: asyncpg.Connection
) -> None:
    _, email = await auth.user()
    session = await auth.call("login", {"email": email, "password": PASSWORD}, address=_address())
    token = await _reset_token(auth, email)
    stored = await db.fetchval(
        "SELECT row_to_json(t)::text FROM auth.one_time_token t WHERE token_hash = $1",
        hashlib.sha256(token.encode()).hexdigest(),
    )
    assert stored is not None
    assert token not in stored  # stored hashed

    assert await auth.call("reset_password", {"token": token, "new_password": NEW_PASSWORD}) == {
        "changed": True
    }

    assert await auth.login(email, NEW_PASSWORD)
    await _login_refused(auth, email, PASSWORD)
    # sessions started with the old password are over
    error = await auth.refused("refresh", {"refresh_token": session["refresh_token"]})
    assert error.status == 401
    # the token works once
    reused = await auth.refused("reset_password", {"token": token, "new_password": PASSWORD})
    assert reused.status == 401
    assert await auth.login(email, NEW_PASSWORD)


async def test_expired_or_unknown_reset_tokens_are_refused(
    auth: AuthHarness, db: asyncpg.Connection
) -> None:
    _, email = await auth.user()
    token = await _reset_token(auth, email)
    await db.execute(
        "UPDATE auth.one_time_token SET expires_at = now() - interval '1 second'"
        " WHERE token_hash = $1",
        hashlib.sha256(token.encode()).hexdigest(),
    )
    expired = await auth.refused("reset_password", {"token": token, "new_password": NEW_PASSWORD})
    unknown = await auth.refused(
        "reset_password", {"token": "cgo_" + uuid.uuid4().hex, "new_password": NEW_PASSWORD}
    )
    assert expired.status == unknown.status == 401
    assert expired.message == unknown.message
    assert await auth.login(email)  # the old password still holds


async def test_a_weak_new_password_does_not_use_up_the_reset_token(auth: AuthHarness) -> None:
    _, email = await auth.user()
    token = await _reset_token(auth, email)
    weak = await auth.refused("reset_password", {"token": token, "new_password": "weak"})
    assert weak.status == 422
    assert weak.field == "new_password"
    assert await auth.login(email)  # unchanged
    await auth.call("reset_password", {"token": token, "new_password": NEW_PASSWORD})
    assert await auth.login(email, NEW_PASSWORD)


async def test_an_invitation_token_is_not_a_reset_token(auth: AuthHarness) -> None:
    pi, project = await _project(auth)
    email = _email("invitee")
    await auth.call("projects.invite", {"project_id": project["id"], "email": email}, token=pi)
    token = _token_in(auth.inbox.to(email)[0])
    error = await auth.refused("reset_password", {"token": token, "new_password": NEW_PASSWORD})
    assert error.status == 401
    await _login_refused(auth, email, NEW_PASSWORD)


# --- change password --------------------------------------------------------------------------


async def test_change_password_needs_the_current_one_and_ends_sessions(auth: AuthHarness) -> None:
    _, email = await auth.user()
    session = await auth.call("login", {"email": email, "password": PASSWORD}, address=_address())
    access = session["access_token"]

    wrong = await auth.refused(
        "change_password",
        {"current_password": "not my password!", "new_password": NEW_PASSWORD},
        token=access,
    )
    assert wrong.status == 422
    assert wrong.field == "current_password"
    weak = await auth.refused(
        "change_password",
        {"current_password": PASSWORD, "new_password": "weak"},
        token=access,
    )
    assert weak.status == 422
    assert weak.field == "new_password"
    # neither attempt changed anything
    assert (await auth.call("refresh", {"refresh_token": session["refresh_token"]}))[
        "refresh_token"
    ]
    session = await auth.call("login", {"email": email, "password": PASSWORD}, address=_address())

    changed = await auth.call(
        "change_password",
        {"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        token=session["access_token"],
    )

    assert changed == {"changed": True}
    error = await auth.refused("refresh", {"refresh_token": session["refresh_token"]})
    assert error.status == 401
    await _login_refused(auth, email, PASSWORD)
    assert await auth.login(email, NEW_PASSWORD)
    anonymous = await auth.refused(
        "change_password", {"current_password": NEW_PASSWORD, "new_password": PASSWORD}
    )
    assert anonymous.status == 401


# --- hostile names ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [SQL_NAME, HTML_NAME, "Zoë \"Quotes\" & 'Ampersand' <b>"])
async def test_hostile_names_are_stored_and_returned_verbatim(auth: AuthHarness, name: str) -> None:
    email = _email("hostile")
    created = await auth.call(
        "users.create",
        {"email": email, "display_name": name, "password": PASSWORD},
        token=auth.tokens["admin"],
    )
    assert created["display_name"] == name
    me = await auth.call("me", token=await auth.login(email))
    assert me["display_name"] == name
    listed = await auth.call("users.list", {"query": email}, token=auth.tokens["admin"])
    assert [u["display_name"] for u in listed["items"]] == [name]
    # the table is still there and searchable by the hostile text itself
    by_name = await auth.call("users.list", {"query": name}, token=auth.tokens["admin"])
    assert email in [u["email"] for u in by_name["items"]]


@pytest.mark.parametrize("name", [SQL_NAME, HTML_NAME])
async def test_hostile_names_in_mails_are_verbatim_in_text_and_escaped_in_html(
    auth: AuthHarness, name: str
) -> None:
    pi, project = await _project(auth, name=f"{name} {uuid.uuid4().hex[:6]}")
    assert project["name"].startswith(name)
    got = await auth.call("projects.get", {"project_id": project["id"]}, token=pi)
    assert got["name"] == project["name"]
    email = _email("invitee")
    await auth.call("projects.invite", {"project_id": project["id"], "email": email}, token=pi)
    token = _token_in(auth.inbox.to(email)[0])
    await auth.call(
        "accept_invitation", {"token": token, "display_name": name, "password": PASSWORD}
    )
    member = await auth.login(email)
    assert (await auth.call("me", token=member))["display_name"] == name

    # a second mail, to the now-existing account, also names the project
    _, existing = await auth.user()
    await auth.call("projects.invite", {"project_id": project["id"], "email": existing}, token=pi)

    mails = auth.inbox.to(email) + auth.inbox.to(existing)
    assert len(mails) == 2
    for mail in mails:
        parts = _bodies(mail)
        assert parts
        for content_type, text in parts:
            if content_type == "text/html":
                assert name not in text
                assert "<script>" not in text
            else:
                assert project["name"] in text
