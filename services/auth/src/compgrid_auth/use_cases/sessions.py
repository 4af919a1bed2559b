"""Login, refresh (rotating), logout, and trading an API token for an access token.

Every failure of login says the same thing, whatever went wrong; a throttled attempt is
refused (429, with when to retry) before any password is checked (see adapters/throttle.py).
Refresh tokens rotate on every use; presenting one that was already rotated revokes its whole
family, since only a thief would still hold it. Every access token names its session
(``sid``): the refresh family, or the API token it was obtained with; ending either ends its
access tokens at every service within moments (``revoked.<sid>`` in the key bucket).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from compgrid_auth.adapters.repository import find_user_by_email, get_user, user_projects
from compgrid_auth.adapters.secrets import digest, new_secret
from compgrid_auth.adapters.tables import api_token, refresh_token, user_account
from compgrid_auth.use_cases.access import revoke_session
from compgrid_auth.use_cases.audit import record
from compgrid_auth.use_cases.deps import Deps
from compgrid_auth.use_cases.guessing import check_throttle
from compgrid_events import utc_now, uuid7
from compgrid_events.auth_api import ExchangeApiToken, Login, Refresh, TokenPair
from compgrid_runtime.errors import Unauthorized
from compgrid_runtime.rpc import Caller
from compgrid_runtime.uow import UnitOfWork

LOGIN_FAILED = "invalid email or password"


async def _issue(
    deps: Deps, uow: UnitOfWork, user: Any, family: UUID | None, api_token_id: UUID | None = None
) -> TokenPair:
    """Sign an access token of the session (refresh family, or API token) it belongs to."""
    projects = await user_projects(uow.session, user.id)
    access, expires = deps.signer.sign_access(
        user.id, user.roles, projects, session_id=family or api_token_id
    )
    if family is None:
        return TokenPair(access_token=access, access_expires_at=expires)
    secret = new_secret("cgr")
    await uow.session.execute(
        pg_insert(refresh_token).values(
            id=uuid7(),
            family_id=family,
            user_id=user.id,
            token_hash=digest(secret),
            expires_at=utc_now() + timedelta(seconds=deps.settings.refresh_ttl_s),
        )
    )
    return TokenPair(access_token=access, access_expires_at=expires, refresh_token=secret)


async def login(deps: Deps, caller: Caller, body: Login) -> TokenPair:
    """Email + password → access and refresh tokens, or one generic refusal."""
    email = body.email.strip().lower()
    address = caller.client_address
    if len(body.password) > 128:
        raise Unauthorized(LOGIN_FAILED, code="login_failed")
    await check_throttle(deps, email, address)
    async with deps.uow() as uow:  # no connection is held while the hash runs
        user = await find_user_by_email(uow.session, email)
    stored = user.password_hash if user is not None and user.status == "active" else None
    if not await deps.hasher.verify(stored, body.password):
        raise Unauthorized(LOGIN_FAILED, code="login_failed")  # the attempt is counted already
    assert user is not None
    assert stored is not None
    async with deps.uow() as uow:
        current = await get_user(uow.session, user.id, lock=True)
        if current.status != "active" or current.password_hash != stored:
            # disabled, or the password changed, while the hash was being checked
            raise Unauthorized(LOGIN_FAILED, code="login_failed")
        if deps.hasher.needs_rehash(stored):  # the hashing parameters were raised since
            await uow.session.execute(
                update(user_account)
                .where(user_account.c.id == user.id, user_account.c.password_hash == stored)
                .values(password_hash=await deps.hasher.hash(body.password))
            )
        pair = await _issue(deps, uow, user, family=uuid7())
        await record(uow, caller, "session.login", "user", user.id, actor_id=user.id)
        await uow.commit()
    await deps.throttle.succeeded(email, address)
    return pair


async def refresh(deps: Deps, caller: Caller, body: Refresh) -> TokenPair:
    """Rotate a refresh token: the old one dies, a new pair is issued with fresh roles."""
    async with deps.uow() as uow:
        query = select(refresh_token).where(
            refresh_token.c.token_hash == digest(body.refresh_token)
        )
        row = (await uow.session.execute(query.with_for_update())).first()
        if row is None or row.expires_at <= utc_now():
            raise Unauthorized("invalid refresh token", code="invalid_refresh_token")
        if row.revoked_at is not None:
            await _revoke_family(deps, uow, row.family_id)
            await uow.commit()
            raise Unauthorized("invalid refresh token", code="invalid_refresh_token")
        await uow.session.execute(
            update(refresh_token).where(refresh_token.c.id == row.id).values(revoked_at=func.now())
        )
        user = await get_user(uow.session, row.user_id)
        if user.status != "active":
            await _revoke_family(deps, uow, row.family_id)
            await uow.commit()
            raise Unauthorized("invalid refresh token", code="invalid_refresh_token")
        pair = await _issue(deps, uow, user, family=row.family_id)
        await uow.commit()
    return pair


async def _revoke_family(deps: Deps, uow: UnitOfWork, family_id: UUID) -> None:
    """End a session: its refresh tokens here, its access tokens at every verifier."""
    await uow.session.execute(
        update(refresh_token)
        .where(refresh_token.c.family_id == family_id, refresh_token.c.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    await revoke_session(deps, family_id)  # before the commit: never ended only halfway


async def logout(deps: Deps, caller: Caller, body: Refresh) -> dict[str, bool]:
    """End the refresh token's session (this device's): refresh and access tokens alike."""
    async with deps.uow() as uow:
        query = select(refresh_token).where(
            refresh_token.c.token_hash == digest(body.refresh_token)
        )
        row = (await uow.session.execute(query)).first()
        if row is not None:
            await _revoke_family(deps, uow, row.family_id)
            await record(uow, caller, "session.logout", "user", row.user_id, actor_id=row.user_id)
            await uow.commit()
    return {"logged_out": True}


async def exchange_api_token(deps: Deps, caller: Caller, body: ExchangeApiToken) -> TokenPair:
    """A live API token → a short-lived access token with the owner's current rights."""
    async with deps.uow() as uow:
        query = select(api_token).where(api_token.c.token_hash == digest(body.api_token))
        row = (await uow.session.execute(query)).first()
        now = utc_now()
        if row is None or row.revoked_at is not None or (row.expires_at and row.expires_at <= now):
            raise Unauthorized("invalid API token", code="invalid_api_token")
        user = await get_user(uow.session, row.user_id)
        if user.status != "active":
            raise Unauthorized("invalid API token", code="invalid_api_token")
        await uow.session.execute(
            update(api_token).where(api_token.c.id == row.id).values(last_used_at=now)
        )
        pair = await _issue(deps, uow, user, family=None, api_token_id=row.id)
        await uow.commit()
    return pair
