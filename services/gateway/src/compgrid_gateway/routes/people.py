"""Accounts, projects, members, grants and the audit log (``rpc.auth``), with the project
settings other services keep (quota and approval policy in inventory, invoice contacts in
billing)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Body, Query, Request
from starlette.responses import Response

from compgrid_events import auth_api as api
from compgrid_events import billing_api
from compgrid_events import inventory_api as inv
from compgrid_events.auth import ProjectRole
from compgrid_events.base import Contract
from compgrid_gateway.backend import CtxDep
from compgrid_gateway.routes.common import (
    ETAG_HEADER,
    BudgetCodePath,
    body_of,
    created,
    expected_version,
    guarded,
    json_response,
    problems,
    with_etag,
    without,
)

router = APIRouter(responses=problems(412, 428))

UserChange = without(api.UserRef, "user_id", name="UserChange")
ProjectInvite = without(api.Invite, "project_id", name="ProjectInvite")
QuotaChange = without(inv.SetQuota, "project_id", name="QuotaChange")
PolicyChange = without(inv.SetPolicy, "project_id", name="PolicyChange")
ContactsChange = without(billing_api.SetContacts, "project_id", name="ContactsChange")
BudgetCodeChange = without(
    api.UpdateBudgetCode, "budget_code_id", "expected_version", name="BudgetCodeChange"
)


class Membership(Contract):
    """A member's role in a project."""

    role: ProjectRole = ProjectRole.MEMBER


class Invited(Contract):
    """The account the invitation is for; ``invited`` is False when it existed already and
    was added to the project directly."""

    user_id: UUID
    invited: bool


# users and platform settings (admins)


@router.get("/users", tags=["users"], response_model=api.Page[api.UserPublic])
async def list_users(ctx: CtxDep, params: Annotated[api.ListUsers, Query()]) -> Response:
    """Accounts by email, filtered by a substring and status (admins)."""
    return json_response(await ctx.relay("auth", "users.list", params))


@router.post("/users", tags=["users"], status_code=201, response_model=api.UserPublic)
async def create_user(request: Request, ctx: CtxDep, body: api.CreateUser) -> Response:
    """Create an account with roles (admins)."""
    user = await ctx.ask("auth", "users.create", body)
    return created(request, user, f"/users/{user['id']}")


@router.post("/users/{user_id}/disable", tags=["users"], response_model=api.UserPublic)
async def disable_user(
    ctx: CtxDep,
    user_id: UUID,
    body: Annotated[UserChange | None, Body()] = None,  # type: ignore[valid-type]
) -> Response:
    """Disable an account: its tokens stop working everywhere at once (admins)."""
    return json_response(await ctx.relay("auth", "users.disable", body_of(body, user_id=user_id)))


@router.post("/users/{user_id}/enable", tags=["users"], response_model=api.UserPublic)
async def enable_user(
    ctx: CtxDep,
    user_id: UUID,
    body: Annotated[UserChange | None, Body()] = None,  # type: ignore[valid-type]
) -> Response:
    """Enable a disabled account again (admins)."""
    return json_response(await ctx.relay("auth", "users.enable", body_of(body, user_id=user_id)))


@router.get("/settings", tags=["users"], response_model=api.PlatformSettings)
async def get_settings(ctx: CtxDep) -> Response:
    """Platform switches (admins)."""
    return json_response(await ctx.relay("auth", "settings.get"))


@router.put("/settings", tags=["users"], response_model=api.PlatformSettings)
async def update_settings(ctx: CtxDep, body: api.PlatformSettings) -> Response:
    """Change platform switches (admins)."""
    return json_response(await ctx.relay("auth", "settings.update", body))


# projects


@router.get("/projects", tags=["projects"], response_model=api.Page[api.ProjectPublic])
async def list_projects(ctx: CtxDep, params: Annotated[api.ListProjects, Query()]) -> Response:
    """The projects the caller belongs to (all of them for admins and finance)."""
    return json_response(await ctx.relay("auth", "projects.list", params))


@router.post("/projects", tags=["projects"], status_code=201, response_model=api.ProjectPublic)
async def create_project(request: Request, ctx: CtxDep, body: api.CreateProject) -> Response:
    """Create a project (PIs for themselves, admins naming the PI)."""
    project = await ctx.ask("auth", "projects.create", body)
    return created(request, project, f"/projects/{project['id']}")


@router.get("/projects/{project_id}", tags=["projects"], response_model=api.ProjectPublic)
async def get_project(ctx: CtxDep, project_id: UUID) -> Response:
    """A project with its members."""
    return json_response(await ctx.relay("auth", "projects.get", {"project_id": str(project_id)}))


@router.put(
    "/projects/{project_id}/members/{user_id}",
    tags=["projects"],
    response_model=api.ProjectPublic,
)
async def put_member(
    ctx: CtxDep, project_id: UUID, user_id: UUID, body: Membership | None = None
) -> Response:
    """Add an account to a project or change its role there (the project's PI, admins)."""
    payload = body_of(body, project_id=project_id, user_id=user_id)
    return json_response(await ctx.relay("auth", "projects.add_member", payload))


@router.delete(
    "/projects/{project_id}/members/{user_id}",
    tags=["projects"],
    response_model=api.ProjectPublic,
)
async def remove_member(ctx: CtxDep, project_id: UUID, user_id: UUID) -> Response:
    """Take an account out of a project."""
    payload = body_of(None, project_id=project_id, user_id=user_id)
    return json_response(await ctx.relay("auth", "projects.remove_member", payload))


@router.post(
    "/projects/{project_id}/invitations",
    tags=["projects"],
    status_code=202,
    response_model=Invited,
)
async def invite(ctx: CtxDep, project_id: UUID, body: ProjectInvite) -> Response:  # type: ignore[valid-type]
    """Invite someone by email into the project (an invitation link is mailed)."""
    return json_response(
        await ctx.relay("auth", "projects.invite", body_of(body, project_id=project_id)), 202
    )


@router.get(
    "/projects/{project_id}/policy", tags=["projects"], response_model=inv.ProjectPolicyPublic
)
async def get_policy(ctx: CtxDep, project_id: UUID) -> Response:
    """A project's quota, approval rules and default lease, and what it uses now."""
    return json_response(
        await ctx.relay("inventory", "projects.get", {"project_id": str(project_id)})
    )


@router.put(
    "/projects/{project_id}/quota", tags=["projects"], response_model=inv.ProjectPolicyPublic
)
async def set_quota(ctx: CtxDep, project_id: UUID, body: QuotaChange) -> Response:  # type: ignore[valid-type]
    """Set a project's quota (admins)."""
    return json_response(
        await ctx.relay("inventory", "projects.set_quota", body_of(body, project_id=project_id))
    )


@router.put(
    "/projects/{project_id}/policy", tags=["projects"], response_model=inv.ProjectPolicyPublic
)
async def set_policy(ctx: CtxDep, project_id: UUID, body: PolicyChange) -> Response:  # type: ignore[valid-type]
    """Set when requests need the PI's approval and the default lease (the PI)."""
    return json_response(
        await ctx.relay("inventory", "projects.set_policy", body_of(body, project_id=project_id))
    )


@router.get(
    "/projects/{project_id}/contacts", tags=["projects"], response_model=billing_api.Contacts
)
async def get_contacts(ctx: CtxDep, project_id: UUID) -> Response:
    """Who receives the project's invoices by email."""
    return json_response(
        await ctx.relay("billing", "contacts.get", {"project_id": str(project_id)})
    )


@router.put(
    "/projects/{project_id}/contacts", tags=["projects"], response_model=billing_api.Contacts
)
async def set_contacts(ctx: CtxDep, project_id: UUID, body: ContactsChange) -> Response:  # type: ignore[valid-type]
    """Replace who besides the PI receives the project's invoices."""
    return json_response(
        await ctx.relay("billing", "contacts.set", body_of(body, project_id=project_id))
    )


# budget codes (grants)


@router.get("/budget-codes", tags=["budget codes"], response_model=list[api.BudgetCodePublic])
async def list_budget_codes(
    ctx: CtxDep, params: Annotated[api.ListBudgetCodes, Query()]
) -> Response:
    """The grants of one project, or of every project the caller may see."""
    return json_response(await ctx.relay("auth", "budget_codes.list", params))


@router.post(
    "/budget-codes", tags=["budget codes"], status_code=201, response_model=api.BudgetCodePublic
)
async def create_budget_code(request: Request, ctx: CtxDep, body: api.CreateBudgetCode) -> Response:
    """Add a grant to a project (the PI, admins and finance)."""
    code = await ctx.ask("auth", "budget_codes.create", body)
    return created(request, code, f"/budget-codes/{code['id']}", versioned=True)


@router.get(
    "/budget-codes/{budget_code_id}",
    tags=["budget codes"],
    response_model=api.BudgetCodePublic,
    responses=ETAG_HEADER,
)
async def get_budget_code(ctx: CtxDep, budget_code_id: BudgetCodePath) -> Response:
    """A grant (by id or code), with its version as the ETag."""
    code = await ctx.ask("auth", "budget_codes.get", {"budget_code_id": budget_code_id})
    return with_etag(code)


@router.patch(
    "/budget-codes/{budget_code_id}",
    tags=["budget codes"],
    response_model=api.BudgetCodePublic,
)
async def update_budget_code(
    request: Request,
    ctx: CtxDep,
    budget_code_id: BudgetCodePath,
    body: BudgetCodeChange,  # type: ignore[valid-type]
) -> Response:
    """Change a grant (by id or code); ``If-Match`` with the ETag read is required."""
    ctx.principal()  # who asks comes before whether the version matches
    ref = {"budget_code_id": budget_code_id}
    version = await expected_version(
        request, required=True, current=lambda: ctx.ask("auth", "budget_codes.get", ref)
    )
    payload = body_of(body, budget_code_id=budget_code_id, expected_version=version)
    return with_etag(await guarded(ctx.ask("auth", "budget_codes.update", payload)))


# audit and keys (admins)


@router.get("/audit", tags=["audit"], response_model=api.Page[api.AuditEntryPublic])
async def list_audit(ctx: CtxDep, params: Annotated[api.ListAudit, Query()]) -> Response:
    """Who did what, when and from where, newest first (admins); page with ``before_id``."""
    return json_response(await ctx.relay("auth", "audit.list", params))


class KeyRotation(Contract):
    """The signing keys after a rotation: the new key's id and every id still accepted."""

    kid: str
    keys: list[str]


@router.post("/admin/keys/rotate", tags=["audit"], response_model=KeyRotation)
async def rotate_keys(ctx: CtxDep) -> Response:
    """Start signing with a new key; tokens signed with the old one stay valid until expiry."""
    return json_response(await ctx.relay("auth", "keys.rotate"))
