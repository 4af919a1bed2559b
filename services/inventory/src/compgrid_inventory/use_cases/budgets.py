"""Budget codes as a request names them: by id or by code (``DEMO-GRANT-1``).

The inventory knows budget codes from auth's events. A code created a moment ago may not have
reached that projection yet; refusing it would refuse an object its owner has just created. So
a code the projection lacks is read through from auth, on the caller's behalf (auth decides
what the caller may see), and written to the projection as its event would write it: the event,
when it comes, is then a no-op (same version).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from compgrid_events.auth_api import BudgetCodePublic
from compgrid_inventory.adapters.repository import find_budget, save_budget
from compgrid_inventory.use_cases.deps import Deps
from compgrid_runtime.errors import NotFound
from compgrid_runtime.logs import get_logger
from compgrid_runtime.rpc import Caller, RemoteError

log = get_logger(__name__)


def _unknown() -> NotFound:
    return NotFound("no such budget code in this project", field="budget_code_id")


def _same(ref: str, code: BudgetCodePublic) -> bool:
    try:
        return UUID(ref) == code.id
    except ValueError:
        return ref == code.code


async def read_through(
    deps: Deps, caller: Caller, ref: str, project_id: UUID
) -> BudgetCodePublic | None:
    """Auth's copy of a budget code the projection lacks (None: the projection has it, or
    nobody knows it). Asked before the request's transaction: no connection waits on auth."""
    async with deps.uow() as uow:
        if await find_budget(uow.session, ref, project_id) is not None:
            return None
    if deps.ask is None or caller.token is None:
        return None
    try:
        codes = await deps.ask(
            "auth", "budget_codes.list", {"project_id": str(project_id)}, token=caller.token
        )
    except RemoteError as refused:
        if refused.status >= 500:
            raise
        return None
    for code in (BudgetCodePublic.model_validate(c) for c in codes):
        if code.project_id == project_id and _same(ref, code):
            return code
    return None


async def budget_for_request(
    session: AsyncSession, ref: str, project_id: UUID, fetched: BudgetCodePublic | None
) -> Any:
    """The project's budget code named by id or code, written to the projection from auth's
    copy (``read_through``) when the projection lacks it; NotFound when neither knows it."""
    row = await find_budget(session, ref, project_id)
    if row is not None:
        return row
    if fetched is None:
        raise _unknown()
    await save_budget(session, fetched.id, _projection(fetched))
    log.info("budget code read through from auth", budget_code=str(fetched.id))
    return await find_budget(session, str(fetched.id), project_id)


def _projection(code: BudgetCodePublic) -> dict[str, Any]:
    """What the projection keeps of a budget code (as ``on_budget_code`` writes it)."""
    return {
        "project_id": code.project_id,
        "code": code.code,
        "currency": code.funding.currency,
        "valid_from": code.valid_from,
        "valid_to": code.valid_to,
        "status": code.status.value,
        "hard_limit_behaviour": code.hard_limit_behaviour.value,
        "auth_version": code.version,
    }
