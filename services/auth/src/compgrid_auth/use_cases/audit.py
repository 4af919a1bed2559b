"""The audit log: every state change a person makes, append-only, queryable by admins."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import insert, select

from compgrid_auth.adapters.tables import audit_entry
from compgrid_auth.use_cases.deps import Deps
from compgrid_events.auth_api import AuditEntryPublic, ListAudit, Page
from compgrid_runtime.access import require_role
from compgrid_runtime.rpc import Caller
from compgrid_runtime.uow import UnitOfWork


async def record(
    uow: UnitOfWork,
    caller: Caller,
    action: str,
    target_type: str,
    target_id: object,
    *,
    actor_id: UUID | None = None,
    **details: Any,
) -> None:
    """Append one entry in the caller's transaction (actor: the caller unless given)."""
    actor = actor_id or (caller.principal.user_id if caller.principal else None)
    await uow.session.execute(
        insert(audit_entry).values(
            actor_id=actor,
            action=action,
            target_type=target_type,
            target_id=None if target_id is None else str(target_id),
            client_address=caller.client_address,
            request_id=caller.request_id,
            details={k: str(v) for k, v in details.items()},
        )
    )


async def list_audit(deps: Deps, caller: Caller, body: ListAudit) -> Page[AuditEntryPublic]:
    """Return audit entries, newest first, filtered (admins only)."""
    require_role(caller.require())
    t = audit_entry
    query = select(t).order_by(t.c.id.desc()).limit(body.limit + 1)
    filters = {t.c.actor_id: body.actor_id, t.c.action: body.action, t.c.target_id: body.target_id}
    for column, value in filters.items():
        if value is not None:
            query = query.where(column == value)
    if body.since is not None:
        query = query.where(t.c.at >= body.since)
    if body.until is not None:
        query = query.where(t.c.at < body.until)
    if body.before_id is not None:
        query = query.where(t.c.id < body.before_id)
    async with deps.uow() as uow:
        rows = (await uow.session.execute(query)).all()
    items = [AuditEntryPublic.model_validate(row._asdict()) for row in rows[: body.limit]]
    cursor = str(items[-1].id) if len(rows) > body.limit else None
    return Page[AuditEntryPublic](items=items, next_cursor=cursor)
