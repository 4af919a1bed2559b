"""Budget codes (grants): created and changed by the project's PI or an admin.

Every change bumps ``version`` and publishes the full new state, so billing and inventory keep
exact projections; an update names the version it was based on, so no change is lost.
"""

from __future__ import annotations

import itertools
from datetime import date
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from compgrid_auth.adapters.repository import (
    get_budget_code,
    get_project,
    member_project_ids,
    member_role,
)
from compgrid_auth.adapters.tables import budget_code
from compgrid_auth.use_cases.audit import record
from compgrid_auth.use_cases.deps import Deps
from compgrid_events import Money, uuid7
from compgrid_events.auth import BudgetCodeCreated, BudgetCodeUpdated
from compgrid_events.auth_api import (
    BudgetCodePublic,
    BudgetCodeRef,
    CreateBudgetCode,
    ListBudgetCodes,
    UpdateBudgetCode,
)
from compgrid_runtime.access import require_project_manager, require_project_reader
from compgrid_runtime.errors import Conflict, Invalid, NotFound
from compgrid_runtime.rpc import Caller
from compgrid_runtime.uow import UnitOfWork


def budget_public(row: Any) -> BudgetCodePublic:
    """Return a budget code row in public shape."""
    return BudgetCodePublic(
        id=row.id,
        project_id=row.project_id,
        code=row.code,
        name=row.name,
        funding=Money(amount=row.funding_amount, currency=row.currency),
        valid_from=row.valid_from,
        valid_to=row.valid_to,
        soft_thresholds_percent=tuple(row.soft_thresholds),
        hard_limit_behaviour=row.hard_limit_behaviour,
        status=row.status,
        version=row.version,
    )


def _state(row: Any) -> dict[str, Any]:
    public = budget_public(row)
    return {"budget_code_id": public.id, **public.model_dump(exclude={"id"})}


def _check(valid_from: date, valid_to: date, thresholds: tuple[Decimal, ...]) -> list[Decimal]:
    if valid_to < valid_from:
        raise Invalid("valid_to: must not be before valid_from", field="valid_to")
    if not thresholds or any(t <= 0 or t > 1000 for t in thresholds):
        raise Invalid(
            "soft_thresholds_percent: each between 0 and 1000", field="soft_thresholds_percent"
        )
    if any(later <= earlier for earlier, later in itertools.pairwise(thresholds)):
        raise Invalid(
            "soft_thresholds_percent: list them in increasing order, each once",
            field="soft_thresholds_percent",
        )
    return list(thresholds)


async def create_budget_code(
    deps: Deps, caller: Caller, body: CreateBudgetCode
) -> BudgetCodePublic:
    """Register a grant for a project."""
    thresholds = _check(body.valid_from, body.valid_to, body.soft_thresholds_percent)
    async with deps.uow() as uow:
        await _require_manager(uow, caller, body.project_id)
        await get_project(uow.session, body.project_id)
        statement = (
            pg_insert(budget_code)
            .values(
                id=uuid7(),
                project_id=body.project_id,
                code=body.code,
                name=body.name,
                funding_amount=body.funding_amount,
                currency=body.currency,
                valid_from=body.valid_from,
                valid_to=body.valid_to,
                soft_thresholds=thresholds,
                hard_limit_behaviour=body.hard_limit_behaviour,
                status="active",
                version=1,
            )
            .on_conflict_do_nothing(index_elements=["code"])
            .returning(budget_code)
        )
        row = (await uow.session.execute(statement)).first()
        if row is None:
            raise Conflict("this budget code exists", code="code_taken", field="code")
        uow.emit(BudgetCodeCreated(**_state(row)))
        await record(uow, caller, "budget_code.create", "budget_code", row.id, code=row.code)
        await uow.commit()
    return budget_public(row)


async def update_budget_code(
    deps: Deps, caller: Caller, body: UpdateBudgetCode
) -> BudgetCodePublic:
    """Change a grant, refusing when it changed since ``expected_version``."""
    async with deps.uow() as uow:
        try:
            current = await get_budget_code(uow.session, body.budget_code_id, lock=True)
        except NotFound:  # the same answer an outsider gets for a code that exists
            raise NotFound("no such project") from None
        await _require_manager(uow, caller, current.project_id)
        if current.version != body.expected_version:
            raise Conflict(f"budget code is at version {current.version}", code="version_mismatch")
        changes = body.model_dump(exclude_none=True, exclude={"budget_code_id", "expected_version"})
        merged = {**current._asdict(), **changes}
        thresholds = changes.pop("soft_thresholds_percent", None)
        if thresholds is not None:
            changes["soft_thresholds"] = thresholds
        changes["soft_thresholds"] = _check(
            merged["valid_from"],
            merged["valid_to"],
            tuple(current.soft_thresholds if thresholds is None else thresholds),
        )
        row = (
            await uow.session.execute(
                update(budget_code)
                .where(budget_code.c.id == current.id)
                .values(**changes, version=current.version + 1, updated_at=func.now())
                .returning(budget_code)
            )
        ).one()
        uow.emit(BudgetCodeUpdated(**_state(row)))
        await record(
            uow,
            caller,
            "budget_code.update",
            "budget_code",
            row.id,
            fields=",".join(sorted(changes)),
        )
        await uow.commit()
    return budget_public(row)


async def list_budget_codes(
    deps: Deps, caller: Caller, body: ListBudgetCodes
) -> list[BudgetCodePublic]:
    """The grants of one project, or of every project the caller may see."""
    principal = caller.require()
    query = select(budget_code).order_by(budget_code.c.code)
    async with deps.uow() as uow:
        if body.project_id is not None:
            role = await member_role(uow.session, body.project_id, principal.user_id)
            require_project_reader(principal, role)
            query = query.where(budget_code.c.project_id == body.project_id)
        elif not principal.has_role("admin", "finance"):
            mine = await member_project_ids(uow.session, principal.user_id)
            query = query.where(budget_code.c.project_id.in_(mine))
        rows = (await uow.session.execute(query)).all()
    return [budget_public(row) for row in rows]


async def get_budget_code_detail(
    deps: Deps, caller: Caller, body: BudgetCodeRef
) -> BudgetCodePublic:
    """One grant (its project's members, admins and finance)."""
    principal = caller.require()
    async with deps.uow() as uow:
        row = await get_budget_code(uow.session, body.budget_code_id)
        role = await member_role(uow.session, row.project_id, principal.user_id)
    if role is None and not principal.has_role("admin", "finance"):
        raise NotFound("no such budget code")
    return budget_public(row)


async def _require_manager(uow: UnitOfWork, caller: Caller, project_id: UUID) -> None:
    principal = caller.require()
    require_project_manager(
        principal, await member_role(uow.session, project_id, principal.user_id)
    )
