"""Reads of the auth schema that several use cases share."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncSession

from compgrid_auth.adapters.tables import (
    budget_code,
    membership,
    platform_setting,
    project,
    user_account,
)
from compgrid_runtime.errors import NotFound


async def find_user_by_email(session: AsyncSession, email: str) -> Row[Any] | None:
    """Return the account with this (normalised) email, or None."""
    query = select(user_account).where(user_account.c.email == email)
    return (await session.execute(query)).first()


async def get_user(session: AsyncSession, user_id: UUID, *, lock: bool = False) -> Row[Any]:
    """Return one account or raise NotFound."""
    query = select(user_account).where(user_account.c.id == user_id)
    row = (await session.execute(query.with_for_update() if lock else query)).first()
    if row is None:
        raise NotFound("no such user")
    return row


async def user_projects(session: AsyncSession, user_id: UUID) -> dict[str, str]:
    """Return the account's project memberships as {project id: role}."""
    query = select(membership.c.project_id, membership.c.role).where(
        membership.c.user_id == user_id
    )
    return {str(pid): role for pid, role in (await session.execute(query)).all()}


async def get_project(session: AsyncSession, project_id: UUID) -> Row[Any]:
    """Return one project or raise NotFound."""
    row = (await session.execute(select(project).where(project.c.id == project_id))).first()
    if row is None:
        raise NotFound("no such project")
    return row


async def project_members(session: AsyncSession, project_id: UUID) -> dict[UUID, str]:
    """Return the project's members as {user id: role}."""
    query = select(membership.c.user_id, membership.c.role).where(
        membership.c.project_id == project_id
    )
    return dict((await session.execute(query)).all())


async def get_budget_code(
    session: AsyncSession, ref: UUID | str, *, lock: bool = False
) -> Row[Any]:
    """Return one budget code, by id or by its code, or raise NotFound."""
    try:
        condition = budget_code.c.id == (ref if isinstance(ref, UUID) else UUID(ref))
    except ValueError:
        condition = budget_code.c.code == ref
    query = select(budget_code).where(condition)
    row = (await session.execute(query.with_for_update() if lock else query)).first()
    if row is None:
        raise NotFound("no such budget code")
    return row


async def setting_enabled(session: AsyncSession, key: str) -> bool:
    """Return whether a platform switch is on (off when never set)."""
    query = select(platform_setting.c.enabled).where(platform_setting.c.key == key)
    return bool((await session.execute(query)).scalar())


async def member_role(session: AsyncSession, project_id: UUID, user_id: UUID) -> str | None:
    """Return the account's role in the project, or None."""
    query = select(membership.c.role).where(
        membership.c.project_id == project_id, membership.c.user_id == user_id
    )
    return (await session.execute(query)).scalar()


async def member_project_ids(session: AsyncSession, user_id: UUID) -> list[UUID]:
    """Return the projects the account belongs to."""
    query = select(membership.c.project_id).where(membership.c.user_id == user_id)
    return list((await session.execute(query)).scalars())
