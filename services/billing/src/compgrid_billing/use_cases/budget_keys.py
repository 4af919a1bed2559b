"""Budget codes as people name them: by id or by code (``DEMO-GRANT-1``).

Codes are unique across the platform (auth refuses a second one), so a code names at most one
budget code and is never ambiguous. Who may see the budget code found is decided afterwards
exactly as for its id, with the same "not found" for both, so a code of another project tells
nothing more than an id would.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import ColumnElement, select

from compgrid_billing.adapters.tables import budget
from compgrid_runtime.errors import NotFound


def budget_named(key: UUID | str) -> ColumnElement[bool]:
    """The condition selecting the budget code ``key`` names: its id, else its code."""
    try:
        return budget.c.id == (key if isinstance(key, UUID) else UUID(key))
    except ValueError:
        return budget.c.code == key


async def find_budget_code(session: Any, key: UUID | str, field: str) -> tuple[UUID, UUID]:
    """The id and project of the budget code ``key`` names; NotFound (on ``field``) if none."""
    found = (
        await session.execute(select(budget.c.id, budget.c.project_id).where(budget_named(key)))
    ).first()
    if found is None:
        raise NotFound("no such budget code", field=field)
    return found[0], found[1]
