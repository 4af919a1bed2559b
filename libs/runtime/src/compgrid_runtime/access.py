"""Who may do what: the role rules of DESIGN.md as small pure functions.

``admin`` may do everything; ``finance`` reads every project's money; a project's ``pi``
manages its members and grants; ``member`` sees its own projects. The project role comes from
the caller (the auth service reads it from its own tables; other services from the token).
Refusals to outsiders say "not found", so they learn nothing about other tenants.
"""

from __future__ import annotations

from compgrid_runtime.errors import Forbidden, NotFound
from compgrid_runtime.tokens import Principal


def require_role(principal: Principal, *roles: str) -> None:
    """Refuse unless the caller holds one of the platform roles (admin always passes)."""
    if not principal.has_role("admin", *roles):
        raise Forbidden("your role does not allow this")


def require_project_reader(principal: Principal, project_role: str | None) -> None:
    """Refuse (as not found) callers who are neither members nor admin/finance."""
    if project_role is None and not principal.has_role("admin", "finance"):
        raise NotFound("no such project")


def require_project_manager(principal: Principal, project_role: str | None) -> None:
    """Refuse unless the caller is an admin or the project's PI."""
    require_project_reader(principal, project_role)
    if not (principal.has_role("admin") or project_role == "pi"):
        raise Forbidden("only the project's PI or an admin may do this")


def require_project_member(principal: Principal, project_role: str | None) -> None:
    """Refuse unless the caller belongs to the project (admins always pass)."""
    require_project_reader(principal, project_role)
    if project_role is None and not principal.has_role("admin"):
        raise Forbidden("only the project's members may do this")
