"""Passwords: change, reset by emailed token, and finishing an invited account.

A reset request always gets the same answer, whether or not the account exists. Reset and
invitation tokens are single-use, expire, and are stored only as hashes.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from compgrid_auth.adapters.repository import find_user_by_email, get_user
from compgrid_auth.adapters.secrets import digest, new_secret
from compgrid_auth.adapters.tables import one_time_token, refresh_token, user_account
from compgrid_auth.domain.emails import normalise_email
from compgrid_auth.domain.passwords import check_password
from compgrid_auth.use_cases.access import revoke_session
from compgrid_auth.use_cases.audit import record
from compgrid_auth.use_cases.deps import Deps
from compgrid_auth.use_cases.guessing import check_throttle
from compgrid_events import utc_now
from compgrid_events.auth_api import (
    AcceptInvitation,
    ChangePassword,
    RequestPasswordReset,
    ResetPassword,
)
from compgrid_runtime.errors import Invalid, Unauthorized
from compgrid_runtime.mail import Mail
from compgrid_runtime.rpc import Caller
from compgrid_runtime.uow import UnitOfWork

RESET_SENT = {"message": "if the account exists, a reset link is on its way"}


async def _set_password(
    deps: Deps,
    uow: UnitOfWork,
    user: Any,
    password: str,
    *,
    activate: bool = False,
    field: str = "password",
    keep_session: str | None = None,
) -> None:
    check_password(password, email=user.email, field=field)
    values: dict[str, Any] = {"password_hash": await deps.hasher.hash(password)}
    if activate:
        values["status"] = "active"
    await uow.session.execute(
        update(user_account)
        .where(user_account.c.id == user.id)
        .values(**values, updated_at=func.now())
    )
    ended = await uow.session.execute(  # every session of the account ends with its old password
        update(refresh_token)
        .where(refresh_token.c.user_id == user.id, refresh_token.c.revoked_at.is_(None))
        .values(revoked_at=func.now())
        .returning(refresh_token.c.family_id)
    )
    for family_id in set(ended.scalars()):  # their access tokens too, but the caller's own
        if str(family_id) != keep_session:
            await revoke_session(deps, family_id)


async def change_password(deps: Deps, caller: Caller, body: ChangePassword) -> dict[str, bool]:
    """The caller replaces their password, proving the current one."""
    principal = caller.require()
    async with deps.uow() as uow:
        email = (await get_user(uow.session, principal.user_id)).email
    await check_throttle(deps, email, caller.client_address)  # the same guesses as at login
    async with deps.uow() as uow:
        user = await get_user(uow.session, principal.user_id, lock=True)
        if not await deps.hasher.verify(user.password_hash, body.current_password):
            raise Invalid("current_password: does not match", field="current_password")
        await _set_password(
            deps,
            uow,
            user,
            body.new_password,
            field="new_password",
            keep_session=principal.session_id,
        )
        await record(uow, caller, "user.password_change", "user", user.id)
        await uow.commit()
    await deps.throttle.succeeded(user.email, caller.client_address)
    return {"changed": True}


async def issue_one_time_token(
    deps: Deps,
    uow: UnitOfWork,
    *,
    purpose: str,
    user_id: Any,
    ttl_s: int,
    project_id: Any = None,
) -> str:
    """Store a single-use token's hash and return the token."""
    secret = new_secret("cgo")
    await uow.session.execute(
        pg_insert(one_time_token).values(
            token_hash=digest(secret),
            purpose=purpose,
            user_id=user_id,
            project_id=project_id,
            expires_at=utc_now() + timedelta(seconds=ttl_s),
        )
    )
    return secret


async def use_one_time_token(uow: UnitOfWork, token: str, purpose: str) -> Any:
    """Consume a single-use token; Unauthorized when unknown, used or expired."""
    statement = (
        update(one_time_token)
        .where(
            one_time_token.c.token_hash == digest(token),
            one_time_token.c.purpose == purpose,
            one_time_token.c.used_at.is_(None),
            one_time_token.c.expires_at > func.now(),
        )
        .values(used_at=func.now())
        .returning(one_time_token)
    )
    row = (await uow.session.execute(statement)).first()
    if row is None:
        raise Unauthorized("invalid or expired token", code="invalid_token")
    return row


async def request_password_reset(
    deps: Deps, caller: Caller, body: RequestPasswordReset
) -> dict[str, str]:
    """Email a reset link to an active account; answer the same in every case."""
    try:
        email = normalise_email(body.email)
    except Invalid:
        return RESET_SENT
    async with deps.uow() as uow:
        user = await find_user_by_email(uow.session, email)
        if user is None or user.status != "active":
            return RESET_SENT
        token = await issue_one_time_token(
            deps, uow, purpose="reset", user_id=user.id, ttl_s=deps.settings.reset_ttl_s
        )
        await record(uow, caller, "user.password_reset_request", "user", user.id, actor_id=user.id)
        await deps.mailer.send(
            Mail(
                to=(user.email,),
                subject="Reset your CompGrid password",
                text=f"Use this token within an hour to set a new password:\n\n{token}\n\n"
                f"or open {deps.settings.public_url}/reset-password?token={token}\n"
                "If you did not ask for this, ignore this mail.",
            )
        )
        await uow.commit()
    return RESET_SENT


async def reset_password(deps: Deps, caller: Caller, body: ResetPassword) -> dict[str, bool]:
    """Set a new password with a reset token."""
    async with deps.uow() as uow:
        used = await use_one_time_token(uow, body.token, "reset")
        user = await get_user(uow.session, used.user_id, lock=True)
        if user.status != "active":
            raise Unauthorized("invalid or expired token", code="invalid_token")
        await _set_password(deps, uow, user, body.new_password, field="new_password")
        await record(uow, caller, "user.password_reset", "user", user.id, actor_id=user.id)
        await uow.commit()
    return {"changed": True}


async def accept_invitation(deps: Deps, caller: Caller, body: AcceptInvitation) -> dict[str, Any]:
    """An invited person sets their name and password and becomes active."""
    async with deps.uow() as uow:
        used = await use_one_time_token(uow, body.token, "invite")
        user = await get_user(uow.session, used.user_id, lock=True)
        if user.status != "invited":  # disabled meanwhile, or accepted already
            raise Unauthorized("invalid or expired token", code="invalid_token")
        await _set_password(deps, uow, user, body.password, activate=True)
        await uow.session.execute(
            update(user_account)
            .where(user_account.c.id == user.id)
            .values(display_name=body.display_name)
        )
        await record(uow, caller, "user.accept_invitation", "user", user.id, actor_id=user.id)
        await uow.commit()
    return {"user_id": str(user.id), "email": user.email}
