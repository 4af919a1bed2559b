"""Projects (labs) and their members: created by PIs, managed by their PI or an admin."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from compgrid_auth.adapters.repository import (
    find_user_by_email,
    get_project,
    get_user,
    member_project_ids,
    member_role,
    project_members,
)
from compgrid_auth.adapters.tables import membership, project
from compgrid_auth.domain.emails import normalise_email
from compgrid_auth.use_cases.access import publish_access
from compgrid_auth.use_cases.audit import record
from compgrid_auth.use_cases.deps import Deps
from compgrid_auth.use_cases.passwords import issue_one_time_token
from compgrid_auth.use_cases.users import insert_user
from compgrid_events import Money, uuid7
from compgrid_events.auth import MembershipChanged, ProjectCreated, ProjectRole, Role
from compgrid_events.auth_api import (
    AddMember,
    CreateProject,
    Invite,
    ListProjects,
    Page,
    ProjectPublic,
    ProjectRef,
    RemoveMember,
)
from compgrid_runtime.access import (
    require_project_manager,
    require_project_reader,
    require_role,
)
from compgrid_runtime.errors import Conflict, Invalid
from compgrid_runtime.mail import Mail
from compgrid_runtime.rpc import Caller
from compgrid_runtime.uow import UnitOfWork


def project_public(row: Any, members: dict[UUID, str]) -> ProjectPublic:
    """Return a project row and its members in public shape."""
    threshold = (
        Money(amount=row.approval_threshold_amount, currency=row.approval_currency)
        if row.approval_threshold_amount is not None
        else None
    )
    return ProjectPublic(
        id=row.id,
        name=row.name,
        pi_user_id=row.pi_user_id,
        requires_approval_above=threshold,
        default_lease_hours=row.default_lease_hours,
        members={k: ProjectRole(v) for k, v in members.items()},
        created_at=row.created_at,
    )


async def _pi_for(uow: UnitOfWork, caller: Caller, requested: UUID | None) -> UUID:
    principal = caller.require()
    require_role(principal, "pi")
    if not principal.has_role("admin") and requested not in (None, principal.user_id):
        raise Invalid("pi_user_id: a PI creates projects for themselves", field="pi_user_id")
    pi_id = requested or principal.user_id
    pi = await get_user(uow.session, pi_id)
    if pi.status != "active" or not {"pi", "admin"} & set(pi.roles):
        raise Invalid("pi_user_id: must be an active account with the pi role", field="pi_user_id")
    return pi_id


async def _set_member(
    uow: UnitOfWork, caller: Caller, project_id: UUID, user_id: UUID, role: ProjectRole
) -> None:
    statement = pg_insert(membership).values(project_id=project_id, user_id=user_id, role=role)
    await uow.session.execute(
        statement.on_conflict_do_update(
            index_elements=["project_id", "user_id"], set_={"role": role}
        )
    )
    uow.emit(MembershipChanged(project_id=project_id, user_id=user_id, role=role))
    await record(
        uow, caller, "project.member_set", "project", project_id, user_id=user_id, role=role.value
    )


async def create_project(deps: Deps, caller: Caller, body: CreateProject) -> ProjectPublic:
    """A PI creates a project they lead (an admin may name another PI)."""
    async with deps.uow() as uow:
        pi_id = await _pi_for(uow, caller, body.pi_user_id)
        threshold = body.requires_approval_above
        statement = (
            pg_insert(project)
            .values(
                id=uuid7(),
                name=body.name,
                pi_user_id=pi_id,
                approval_threshold_amount=threshold.amount if threshold else None,
                approval_currency=threshold.currency if threshold else None,
                default_lease_hours=body.default_lease_hours,
                created_by=caller.require().user_id,
            )
            .on_conflict_do_nothing(index_elements=["name"])
            .returning(project)
        )
        row = (await uow.session.execute(statement)).first()
        if row is None:
            raise Conflict("a project with this name exists", code="name_taken", field="name")
        uow.emit(
            ProjectCreated(
                project_id=row.id,
                name=row.name,
                pi_user_id=pi_id,
                requires_approval_above=threshold,
                default_lease_hours=body.default_lease_hours,
            )
        )
        await record(uow, caller, "project.create", "project", row.id, name=row.name)
        await _set_member(uow, caller, row.id, pi_id, ProjectRole.PI)
        await uow.commit()
    await publish_access(deps, [pi_id])
    return project_public(row, {pi_id: "pi"})


async def list_projects(deps: Deps, caller: Caller, body: ListProjects) -> Page[ProjectPublic]:
    """The projects the caller may see, by name."""
    principal = caller.require()
    query = select(project).order_by(project.c.name).limit(body.limit + 1)
    if body.after:
        query = query.where(project.c.name > body.after)
    async with deps.uow() as uow:
        if not principal.has_role("admin", "finance"):
            mine = await member_project_ids(uow.session, principal.user_id)
            query = query.where(project.c.id.in_(mine))
        rows = (await uow.session.execute(query)).all()
        items = [
            project_public(r, await project_members(uow.session, r.id)) for r in rows[: body.limit]
        ]
    cursor = items[-1].name if len(rows) > body.limit else None
    return Page[ProjectPublic](items=items, next_cursor=cursor)


async def _role(uow: UnitOfWork, caller: Caller, project_id: UUID) -> str | None:
    return await member_role(uow.session, project_id, caller.require().user_id)


async def get_project_detail(deps: Deps, caller: Caller, body: ProjectRef) -> ProjectPublic:
    """One project with its members (members, admins and finance)."""
    async with deps.uow() as uow:
        require_project_reader(caller.require(), await _role(uow, caller, body.project_id))
        row = await get_project(uow.session, body.project_id)
        return project_public(row, await project_members(uow.session, row.id))


async def add_member(deps: Deps, caller: Caller, body: AddMember) -> ProjectPublic:
    """Add an existing account to the project, or change its role there."""
    async with deps.uow() as uow:
        require_project_manager(caller.require(), await _role(uow, caller, body.project_id))
        row = await get_project(uow.session, body.project_id)
        _require_joinable(await get_user(uow.session, body.user_id), "user_id")
        if body.user_id == row.pi_user_id and body.role is not ProjectRole.PI:
            raise Conflict("the project's PI stays its PI", code="pi_role_fixed")
        await _set_member(uow, caller, row.id, body.user_id, body.role)
        members = await project_members(uow.session, row.id)
        await uow.commit()
    await publish_access(deps, [body.user_id])
    return project_public(row, members)


def _require_joinable(user: Any, field: str) -> None:
    """A disabled account joins no project, whichever way it is asked."""
    if user.status == "disabled":
        raise Conflict("this account is disabled", code="user_disabled", field=field)


async def remove_member(deps: Deps, caller: Caller, body: RemoveMember) -> ProjectPublic:
    """Take an account out of the project (never its PI)."""
    async with deps.uow() as uow:
        require_project_manager(caller.require(), await _role(uow, caller, body.project_id))
        row = await get_project(uow.session, body.project_id)
        if body.user_id == row.pi_user_id:
            raise Conflict("the project's PI cannot be removed", code="pi_role_fixed")
        removed = await uow.session.execute(
            delete(membership).where(
                membership.c.project_id == row.id, membership.c.user_id == body.user_id
            )
        )
        if removed.rowcount:  # type: ignore[attr-defined]
            uow.emit(MembershipChanged(project_id=row.id, user_id=body.user_id, role=None))
            await record(
                uow, caller, "project.member_remove", "project", row.id, user_id=body.user_id
            )
        members = await project_members(uow.session, row.id)
        await uow.commit()
    await publish_access(deps, [body.user_id])
    return project_public(row, members)


async def invite(deps: Deps, caller: Caller, body: Invite) -> dict[str, Any]:
    """Invite someone by email: an existing account joins; a new one gets an invitation mail."""
    email = normalise_email(body.email)
    async with deps.uow() as uow:
        require_project_manager(caller.require(), await _role(uow, caller, body.project_id))
        row = await get_project(uow.session, body.project_id)
        user = await find_user_by_email(uow.session, email)
        if user is not None:
            _require_joinable(user, "email")
        if user is None:
            created = await insert_user(
                deps,
                uow,
                caller,
                email=email,
                display_name=email[:200],  # until the invitee names themselves
                password=None,
                roles=(Role.MEMBER,),
                status="invited",
            )
            user_id = created.id
        else:
            user_id = user.id
        token = None
        if user is None or user.status == "invited":  # not yet accepted: a fresh invitation
            token = await issue_one_time_token(
                deps,
                uow,
                purpose="invite",
                user_id=user_id,
                ttl_s=deps.settings.invitation_ttl_s,
                project_id=row.id,
            )
        await _set_member(uow, caller, row.id, user_id, body.role)
        inviter = await get_user(uow.session, caller.require().user_id)
        await deps.mailer.send(
            _invitation_mail(deps, email, row.name, token, inviter=inviter.display_name)
        )
        await uow.commit()
    await publish_access(deps, [user_id])
    return {"user_id": str(user_id), "invited": token is not None}


def _days(seconds: int) -> str:
    days = max(1, round(seconds / 86_400))
    return "1 day" if days == 1 else f"{days} days"


def _invitation_mail(
    deps: Deps, email: str, project_name: str, token: str | None, *, inviter: str
) -> Mail:
    """Say who invited whom to what: in the subject, since that is what people see first."""
    if token is None:
        subject = f"{inviter} added you to {project_name} on CompGrid"
        text = f"{inviter} added you to the CompGrid project {project_name}."
    else:
        subject = f"{inviter} invited you to join {project_name} on CompGrid"
        text = (
            f"{inviter} invited you to the CompGrid project {project_name}.\n\n"
            f"Accept with this token within {_days(deps.settings.invitation_ttl_s)}:"
            f"\n\n{token}\n\n"
            f"or open {deps.settings.public_url}/accept-invitation?token={token}\n"
        )
    return Mail(to=(email,), subject=subject, text=text)
