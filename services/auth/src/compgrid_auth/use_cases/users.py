"""Accounts: creation by admins, self-registration, disabling, listing, the caller's own."""

from __future__ import annotations

from uuid import UUID

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from compgrid_auth.adapters.keys import publish_disabled
from compgrid_auth.adapters.repository import get_user, setting_enabled, user_projects
from compgrid_auth.adapters.tables import platform_setting, user_account
from compgrid_auth.domain.emails import normalise_email
from compgrid_auth.domain.passwords import check_password
from compgrid_auth.use_cases.audit import record
from compgrid_auth.use_cases.deps import Deps
from compgrid_events import uuid7
from compgrid_events.auth import Role, UserDisabled, UserRegistered
from compgrid_events.auth_api import (
    CreateUser,
    ListUsers,
    Me,
    Page,
    PlatformSettings,
    Register,
    UserPublic,
    UserRef,
)
from compgrid_runtime.access import require_role
from compgrid_runtime.errors import Conflict, Forbidden
from compgrid_runtime.rpc import Caller
from compgrid_runtime.uow import UnitOfWork

SELF_REGISTRATION = "self_registration"


def user_public(row: object) -> UserPublic:
    """Return an account row as its public shape."""
    return UserPublic.model_validate(row, from_attributes=True)


async def insert_user(
    deps: Deps,
    uow: UnitOfWork,
    caller: Caller,
    *,
    email: str,
    display_name: str,
    password: str | None,
    roles: tuple[Role, ...],
    status: str = "active",
) -> UserPublic:
    """Add an account (and its UserRegistered event); Conflict when the email is taken."""
    email = normalise_email(email)
    if password is not None:
        check_password(password, email=email)
    password_hash = await deps.hasher.hash(password) if password is not None else None
    user_id = uuid7()
    statement = (
        pg_insert(user_account)
        .values(
            id=user_id,
            email=email,
            display_name=display_name,
            password_hash=password_hash,
            roles=[r.value for r in roles],
            status=status,
        )
        .on_conflict_do_nothing(index_elements=["email"])
        .returning(user_account)
    )
    row = (await uow.session.execute(statement)).first()
    if row is None:
        raise Conflict("an account with this email exists", code="email_taken", field="email")
    uow.emit(UserRegistered(user_id=user_id, email=email, display_name=display_name, roles=roles))
    actor = caller.principal.user_id if caller.principal else user_id
    await record(
        uow, caller, "user.create", "user", user_id, actor_id=actor, email=email, status=status
    )
    return user_public(row)


async def create_user(deps: Deps, caller: Caller, body: CreateUser) -> UserPublic:
    """An admin creates an account with the given roles."""
    require_role(caller.require())
    async with deps.uow() as uow:
        user = await insert_user(
            deps,
            uow,
            caller,
            email=body.email,
            display_name=body.display_name,
            password=body.password,
            roles=body.roles,
        )
        await uow.commit()
    return user


async def register(deps: Deps, caller: Caller, body: Register) -> UserPublic:
    """Anyone registers a member account, when an admin has switched that on."""
    async with deps.uow() as uow:
        if not await setting_enabled(uow.session, SELF_REGISTRATION):
            raise Forbidden("self-registration is switched off", code="registration_closed")
        user = await insert_user(
            deps,
            uow,
            caller,
            email=body.email,
            display_name=body.display_name,
            password=body.password,
            roles=(Role.MEMBER,),
        )
        await uow.commit()
    return user


async def set_disabled(deps: Deps, caller: Caller, body: UserRef, disabled: bool) -> UserPublic:
    """An admin disables (or enables) an account; its tokens stop working everywhere."""
    principal = caller.require()
    require_role(principal)
    if disabled and body.user_id == principal.user_id:
        raise Conflict("you cannot disable your own account", code="self_disable")
    async with deps.uow() as uow:
        await get_user(uow.session, body.user_id, lock=True)
        status = "disabled" if disabled else "active"
        statement = (
            update(user_account)
            .where(user_account.c.id == body.user_id)
            .values(status=status, updated_at=func.now())
            .returning(user_account)
        )
        row = (await uow.session.execute(statement)).one()
        if disabled:
            uow.emit(UserDisabled(user_id=body.user_id, reason=body.reason))
        await record(
            uow,
            caller,
            f"user.{'disable' if disabled else 'enable'}",
            "user",
            body.user_id,
            reason=body.reason,
        )
        await uow.commit()
    await publish_disabled(deps.js(), body.user_id, disabled)
    return user_public(row)


async def list_users(deps: Deps, caller: Caller, body: ListUsers) -> Page[UserPublic]:
    """Page through accounts by email (admins only)."""
    require_role(caller.require())
    t = user_account
    query = select(t).order_by(t.c.email).limit(body.limit + 1)
    if body.query:
        pattern = f"%{body.query.lower()}%"
        query = query.where(t.c.email.like(pattern) | func.lower(t.c.display_name).like(pattern))
    if body.status:
        query = query.where(t.c.status == body.status)
    if body.after:
        query = query.where(t.c.email > body.after)
    async with deps.uow() as uow:
        rows = (await uow.session.execute(query)).all()
    items = [user_public(row) for row in rows[: body.limit]]
    cursor = items[-1].email if len(rows) > body.limit else None
    return Page[UserPublic](items=items, next_cursor=cursor)


async def get_me(deps: Deps, caller: Caller, body: object) -> Me:
    """The caller's own account and memberships."""
    principal = caller.require()
    async with deps.uow() as uow:
        row = await get_user(uow.session, principal.user_id)
        projects = await user_projects(uow.session, principal.user_id)
    return Me(**user_public(row).model_dump(), projects={UUID(k): v for k, v in projects.items()})


async def get_settings(deps: Deps, caller: Caller, body: object) -> PlatformSettings:
    """The platform switches (admins only)."""
    require_role(caller.require())
    async with deps.uow() as uow:
        return PlatformSettings(
            self_registration=await setting_enabled(uow.session, SELF_REGISTRATION)
        )


async def update_settings(deps: Deps, caller: Caller, body: PlatformSettings) -> PlatformSettings:
    """Switch self-registration on or off (admins only)."""
    require_role(caller.require())
    async with deps.uow() as uow:
        statement = pg_insert(platform_setting).values(
            key=SELF_REGISTRATION, enabled=body.self_registration
        )
        await uow.session.execute(
            statement.on_conflict_do_update(
                index_elements=["key"], set_={"enabled": body.self_registration}
            )
        )
        await record(
            uow,
            caller,
            "settings.update",
            "settings",
            SELF_REGISTRATION,
            self_registration=body.self_registration,
        )
        await uow.commit()
    return body
