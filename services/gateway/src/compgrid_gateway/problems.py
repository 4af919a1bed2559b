"""Every error in one shape: RFC 9457 problem details (``application/problem+json``).

``type`` is a stable URI per machine-readable ``code``; ``field`` names the input at fault when
there is one. Errors from the owning services keep their status and code; a service that does
not answer becomes 503 (nothing listening) or 504 (no answer in time), never a hang.
"""

from __future__ import annotations

import json
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import compile_path

from compgrid_runtime.errors import DomainError, invalid
from compgrid_runtime.logs import get_logger

log = get_logger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://compgrid.example/problems/"

TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    402: "Payment required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    412: "Precondition failed",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    428: "Precondition required",
    429: "Too many requests",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
}
STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    402: "payment_required",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    412: "precondition_failed",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    428: "precondition_required",
    429: "too_many_requests",
    500: "internal",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "timeout",
}


class Problem(BaseModel):
    """An error: what went wrong, for people (``title``, ``detail``) and for programs
    (``status``, ``code``, ``field``)."""

    type: str = Field(description="URI naming the kind of problem")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    code: str = Field(description="stable machine-readable code")
    field: str | None = Field(default=None, description="the input at fault, dotted")
    instance: str | None = Field(default=None, description="the request path")
    request_id: str | None = None
    instance_id: str | None = Field(
        default=None, description="a request refused at admission: the rejected instance"
    )
    instance_url: str | None = Field(
        default=None, description="where the rejected instance stays readable (as Location)"
    )


class Unavailable(DomainError):
    """Nothing listens for the owning service's operation."""

    status = 503
    code = "service_unavailable"


class TimedOut(DomainError):
    """The owning service did not answer in time."""

    status = 504
    code = "timeout"


class HttpProblem(DomainError):
    """A refusal decided at the edge (size, media type, preconditions, throttling)."""

    def __init__(
        self, status: int, message: str, *, code: str | None = None, field: str | None = None
    ) -> None:
        super().__init__(message, code=code or STATUS_CODES.get(status, "error"), field=field)
        self.status = status


def problem(
    status: int,
    detail: str,
    *,
    code: str | None = None,
    field: str | None = None,
    instance: str | None = None,
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
    extensions: dict[str, str] | None = None,
) -> Response:
    """Return a problem+json response (``extensions``: members beyond the standard ones)."""
    code = code or STATUS_CODES.get(status, "error")
    body = {
        **(extensions or {}),
        "type": TYPE_BASE + code,
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
        "field": field,
        "instance": instance,
        "request_id": request_id,
    }
    return Response(
        json.dumps(body), status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers
    )


def _request_id(request: Request) -> str | None:
    found = request.scope.get("state", {}).get("request_id")
    return str(found) if found else None


LOCATIONS = ("body", "query", "path", "header")
"""Where FastAPI says an input came from (left out of ``field``)."""


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route serves on the request's path (for ``Allow``)."""
    table: list[tuple[re.Pattern[str], set[str]]] | None = getattr(app.state, "methods", None)
    if table is None:
        table = [
            (compile_path(path)[0], {m.upper() for m in item})
            for path, item in app.openapi()["paths"].items()
        ]
        app.state.methods = table
    path = request.url.path
    found = {m for regex, methods in table if regex.match(path) for m in methods}
    if "GET" in found:
        found.add("HEAD")
    return sorted(found)


def install(app: FastAPI) -> None:
    """Turn every error the application can raise into a problem document."""

    @app.exception_handler(DomainError)
    async def domain_error(request: Request, exc: DomainError) -> Response:
        status = exc.status
        headers = getattr(exc, "headers", None)
        if status == 401:
            headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="compgrid"'}
        return problem(
            status,
            exc.message,
            code=exc.code,
            field=exc.field,
            instance=request.url.path,
            request_id=_request_id(request),
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = list(exc.errors())
        if errors and errors[0].get("type") == "json_invalid":
            return problem(
                400,
                "the body is not valid JSON",
                code="malformed_json",
                instance=request.url.path,
                request_id=_request_id(request),
            )
        return await domain_error(request, invalid(errors, skip=LOCATIONS))

    @app.exception_handler(ValidationError)
    async def derived_invalid(request: Request, exc: ValidationError) -> Response:
        # input that passed the route's checks but breaks a contract built from it
        return await domain_error(request, invalid(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else TITLES.get(exc.status_code, "")
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path}"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
            headers["Allow"] = ", ".join(allowed_methods(app, request))
        return problem(
            exc.status_code,
            detail,
            instance=request.url.path,
            request_id=_request_id(request),
            headers=headers,
        )

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> Response:
        log.exception("request failed", path=request.url.path)
        return problem(
            500, "internal error", instance=request.url.path, request_id=_request_id(request)
        )
