"""The ``just dev`` demo: an admin, a PI with a project and a grant, a researcher, finance.

Idempotent: what exists already is left alone, so running it twice changes nothing.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from sqlalchemy import select

from compgrid_auth.adapters.repository import find_user_by_email
from compgrid_auth.adapters.tables import budget_code, membership, project
from compgrid_auth.use_cases.deps import Deps
from compgrid_auth.use_cases.users import insert_user
from compgrid_events import uuid7
from compgrid_events.auth import (
    BudgetCodeCreated,
    MembershipChanged,
    ProjectCreated,
    ProjectRole,
    Role,
)
from compgrid_runtime.rpc import Caller
from compgrid_runtime.uow import UnitOfWork

PEOPLE = {
    "admin": ("admin@compgrid.example", "Ada Admin", "demo-admin-password", (Role.ADMIN,)),
    "pi": ("pi@compgrid.example", "Pat Investigator", "demo-pi-password", (Role.PI,)),
    "researcher": (
        "researcher@compgrid.example",
        "Rae Researcher",
        "demo-researcher-password",
        (Role.MEMBER,),
    ),
    "finance": ("finance@compgrid.example", "Fin Office", "demo-finance-password", (Role.FINANCE,)),
}
PROJECT = "Demo Lab"
CODE = "DEMO-GRANT-1"


async def _person(deps: Deps, uow: UnitOfWork, key: str) -> object:
    email, name, password, roles = PEOPLE[key]
    found = await find_user_by_email(uow.session, email)
    if found is not None:
        return found.id
    created = await insert_user(
        deps,
        uow,
        Caller(None, "demo"),
        email=email,
        display_name=name,
        password=password,
        roles=roles,
    )
    return created.id


async def seed_demo(deps: Deps) -> dict[str, tuple[str, str]]:
    """Create the demo accounts, project and grant; return {role: (email, password)}."""
    async with deps.uow() as uow:
        ids = {key: await _person(deps, uow, key) for key in PEOPLE}
        exists = (
            await uow.session.execute(select(project.c.id).where(project.c.name == PROJECT))
        ).first()
        if exists is None:
            await _demo_project(uow, ids)
        await uow.commit()
    return {key: (email, password) for key, (email, _, password, _) in PEOPLE.items()}


async def _demo_project(uow: UnitOfWork, ids: dict[str, object]) -> None:
    project_id, pi_id = uuid7(), ids["pi"]
    await uow.session.execute(
        project.insert().values(
            id=project_id, name=PROJECT, pi_user_id=pi_id, created_by=ids["admin"]
        )
    )
    uow.emit(ProjectCreated(project_id=project_id, name=PROJECT, pi_user_id=pi_id))
    for key, role in (("pi", ProjectRole.PI), ("researcher", ProjectRole.MEMBER)):
        await uow.session.execute(
            membership.insert().values(project_id=project_id, user_id=ids[key], role=role)
        )
        uow.emit(MembershipChanged(project_id=project_id, user_id=ids[key], role=role))
    year = date.today().year
    code_id = uuid7()
    thresholds = [Decimal(50), Decimal(80), Decimal(100)]
    await uow.session.execute(
        budget_code.insert().values(
            id=code_id,
            project_id=project_id,
            code=CODE,
            name="Demo grant",
            funding_amount=Decimal(10000),
            currency="EUR",
            valid_from=date(year, 1, 1),
            valid_to=date(year, 12, 31),
            soft_thresholds=thresholds,
            hard_limit_behaviour="stop_instances",
            status="active",
            version=1,
        )
    )
    uow.emit(
        BudgetCodeCreated(
            budget_code_id=code_id,
            project_id=project_id,
            code=CODE,
            name="Demo grant",
            funding={"amount": Decimal(10000), "currency": "EUR"},
            valid_from=date(year, 1, 1),
            valid_to=date(year, 12, 31),
        )
    )
