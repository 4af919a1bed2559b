"""Who an operation is for, as the OpenAPI document declares it, and the refusals that follow
from the token alone.

The owning service decides access; the edge forwards the caller's token. But input is checked
here, before any service is asked, and a stranger must not learn an operation's input rules (or
anything else) before proving who they are. So when the input is bad, the edge first answers
what the token alone decides: no valid token on a guarded operation is a 401, and a token
without the platform role an operation is declared for (``x-roles`` in the document) is a 403.
Only then is the input's fault named (400 or 422). Good input goes to the service unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.routing import compile_path

from compgrid_gateway.backend import bearer
from compgrid_runtime.errors import DomainError, Forbidden, Unauthorized

API = "/api/v1"
PUBLIC_OPERATIONS = {
    ("post", f"{API}/auth/{name}")
    for name in (
        "login",
        "refresh",
        "logout",
        "token",
        "register",
        "password-reset",
        "password-reset/confirm",
        "invitations/accept",
    )
}
"""What anyone may call without a token (the auth service decides the rest)."""

ADMIN = ("admin",)
ADMIN_OR_FINANCE = ("admin", "finance")
ROLES: dict[tuple[str, str], tuple[str, ...]] = {
    **{
        (method, f"{API}{path}"): ADMIN
        for method, path in (
            ("get", "/hosts"),
            ("post", "/hosts"),
            ("get", "/hosts/{host_id}"),
            ("patch", "/hosts/{host_id}"),
            ("post", "/datacenters"),
            ("patch", "/datacenters/{datacenter}"),
            ("post", "/images"),
            ("post", "/price-tiers"),
            ("post", "/price-tiers/{price_tier_id}/rates"),
            ("post", "/instance-types"),
            ("post", "/instance-types/{instance_type_id}/retire"),
            ("post", "/admin/claims/repair"),
            ("post", "/admin/keys/rotate"),
            ("get", "/users"),
            ("post", "/users"),
            ("post", "/users/{user_id}/disable"),
            ("post", "/users/{user_id}/enable"),
            ("get", "/settings"),
            ("put", "/settings"),
            ("get", "/audit"),
            ("post", "/billing/runs"),
            ("put", "/projects/{project_id}/quota"),
            ("get", "/stats/utilisation"),
        )
    },
    **{
        (method, f"{API}{path}"): ADMIN_OR_FINANCE
        for method, path in (
            ("get", "/billing/runs"),
            ("get", "/billing/export"),
            ("get", "/billing/parked"),
            ("get", "/deliveries"),
            ("get", "/stats/billing"),
        )
    },
}
"""Operations for platform roles only (the owning service refuses everyone else as well)."""

Handler = Callable[[Request, Exception], Awaitable[Response]]


def document(schema: dict[str, Any]) -> None:
    """Mark public operations as needing no token and role-restricted ones with ``x-roles``."""
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if (method, path) in PUBLIC_OPERATIONS or not path.startswith(API):
                operation["security"] = []
            if roles := ROLES.get((method, path)):
                operation["x-roles"] = list(roles)


def _template(request: Request, within: str) -> str:
    """The document's path of the request's route (a route knows only its path within the
    router that holds it)."""
    table: list[tuple[re.Pattern[str], str]] | None = getattr(request.app.state, "paths", None)
    if table is None:
        table = [(compile_path(path)[0], path) for path in request.app.openapi()["paths"]]
        request.app.state.paths = table
    path = request.url.path
    return next((t for regex, t in table if t.endswith(within) and regex.match(path)), within)


def refusal(request: Request) -> DomainError | None:
    """What the token alone refuses for the request's operation, if anything."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return None
    operation = (request.method.lower(), _template(request, route.path_format))
    if operation in PUBLIC_OPERATIONS or not operation[1].startswith(API):
        return None
    token = bearer(request.headers.get("authorization"))
    if token is None:
        return Unauthorized("authentication required")
    try:
        principal = request.app.state.backend.verifier.verify(token)
    except DomainError as exc:
        return exc
    roles = ROLES.get(operation)
    if roles and not principal.has_role(*roles):
        return Forbidden("your role does not allow this")
    return None


def install(app: FastAPI) -> None:
    """Answer bad input only after the token: wraps the validation handler of ``problems``."""
    handlers = cast(dict[Any, Handler], app.exception_handlers)
    named, refuse = handlers[RequestValidationError], handlers[DomainError]

    async def authenticated_first(request: Request, exc: Exception) -> Response:
        refused = refusal(request)
        return await (named(request, exc) if refused is None else refuse(request, refused))

    app.add_exception_handler(RequestValidationError, authenticated_first)
