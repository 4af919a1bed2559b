"""API tokens for the CLI and scripts: named, shown once, stored hashed, revocable (with the
access tokens obtained with them)."""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from compgrid_auth.adapters.secrets import digest, new_secret
from compgrid_auth.adapters.tables import api_token
from compgrid_auth.use_cases.access import revoke_session
from compgrid_auth.use_cases.audit import record
from compgrid_auth.use_cases.deps import Deps
from compgrid_events import uuid7
from compgrid_events.auth_api import ApiTokenCreated, ApiTokenPublic, ApiTokenRef, CreateApiToken
from compgrid_events.base import utc_now
from compgrid_runtime.errors import Conflict, Invalid, NotFound
from compgrid_runtime.rpc import Caller


async def create_api_token(deps: Deps, caller: Caller, body: CreateApiToken) -> ApiTokenCreated:
    """Create a token with the caller's rights; its secret is in this answer only."""
    principal = caller.require()
    if body.expires_at is not None and body.expires_at <= utc_now():
        raise Invalid("expires_at: a new token must expire in the future", field="expires_at")
    secret = new_secret("cgt")
    async with deps.uow() as uow:
        statement = (
            pg_insert(api_token)
            .values(
                id=uuid7(),
                user_id=principal.user_id,
                name=body.name,
                prefix=secret[:10],
                token_hash=digest(secret),
                expires_at=body.expires_at,
            )
            .on_conflict_do_nothing()
            .returning(api_token)
        )
        row = (await uow.session.execute(statement)).first()
        if row is None:
            raise Conflict("you already have a live token with this name", field="name")
        await record(uow, caller, "api_token.create", "api_token", row.id, name=body.name)
        await uow.commit()
    return ApiTokenCreated(
        **ApiTokenPublic.model_validate(row, from_attributes=True).model_dump(), token=secret
    )


async def list_api_tokens(deps: Deps, caller: Caller, body: object) -> list[ApiTokenPublic]:
    """The caller's tokens, newest first, without secrets."""
    principal = caller.require()
    query = (
        select(api_token)
        .where(api_token.c.user_id == principal.user_id)
        .order_by(api_token.c.created_at.desc())
    )
    async with deps.uow() as uow:
        rows = (await uow.session.execute(query)).all()
    return [ApiTokenPublic.model_validate(row, from_attributes=True) for row in rows]


async def revoke_api_token(deps: Deps, caller: Caller, body: ApiTokenRef) -> ApiTokenPublic:
    """Revoke one of the caller's tokens (admins may revoke anyone's)."""
    principal = caller.require()
    query = update(api_token).where(
        api_token.c.id == body.token_id, api_token.c.revoked_at.is_(None)
    )
    if not principal.has_role("admin"):
        query = query.where(api_token.c.user_id == principal.user_id)
    async with deps.uow() as uow:
        row = (
            await uow.session.execute(query.values(revoked_at=func.now()).returning(api_token))
        ).first()
        if row is None:
            raise NotFound("no such live token")
        await record(uow, caller, "api_token.revoke", "api_token", row.id)
        await revoke_session(deps, row.id)  # the access tokens it was traded for end too
        await uow.commit()
    return ApiTokenPublic.model_validate(row, from_attributes=True)
