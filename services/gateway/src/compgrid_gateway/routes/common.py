"""What the route modules share: answers with ``Location``, ETags and documented problems."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Path, Request
from pydantic import BaseModel, create_model
from pydantic_core import to_jsonable_python
from starlette.responses import Response

from compgrid_events.base import Contract
from compgrid_gateway.problems import PROBLEM_MEDIA_TYPE, HttpProblem
from compgrid_runtime.rpc import RemoteError

API = "/api/v1"

_PROBLEM_CONTENT = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
_DESCRIPTIONS = {
    400: "Malformed request (bad JSON, NUL characters, bad header)",
    401: "No valid credentials",
    402: "Refused at admission: the budget code cannot pay for it (the rejected instance is at"
    " `Location`)",
    403: "The caller's role does not allow this",
    404: "No such resource, or the caller may not know of it",
    409: "Clashes with the current state",
    412: "If-Match does not match the current version",
    413: "Body larger than the limit",
    415: "Body is not JSON",
    422: "Input breaks a rule; `field` names it",
    428: "If-Match is required",
    429: "Rate limit exceeded; see Retry-After",
    503: "The owning service is not running",
    504: "The owning service did not answer in time",
}
COMMON_PROBLEMS = (400, 401, 403, 404, 409, 413, 415, 422, 429, 503, 504)


def problems(*extra: int) -> dict[int | str, dict[str, Any]]:
    """Document the problem answers of a route (the common ones plus ``extra``)."""
    return {
        status: {"description": _DESCRIPTIONS[status], "content": _PROBLEM_CONTENT}
        for status in sorted({*COMMON_PROBLEMS, *extra})
    }


BudgetCodePath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._/-]+$",
        description="the budget code's id or its code (e.g. DEMO-GRANT-1)",
    ),
]
"""A budget code in a path, as people type it: its id or its code."""

ETAG_HEADER: dict[int | str, dict[str, Any]] = {
    200: {"headers": {"ETag": {"schema": {"type": "string"}}}}
}
"""Documents the ETag of a versioned resource's answer."""


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Answer with JSON: the service's as it came (``bytes`` from ``relay``; it was produced
    from the same contract the route documents), or a value to encode."""
    return Response(
        data if isinstance(data, bytes) else json.dumps(data, separators=(",", ":")),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def location(request: Request, path: str) -> str:
    """The absolute-path reference of a resource under the API."""
    base = request.app.state.public_url
    return f"{base}{API}{path}"


def accepted(request: Request, data: Any, path: str) -> Response:
    """202: a command was accepted; the resource (as it is now) and where to follow it."""
    return json_response(data, 202, {"Location": location(request, path)})


def created(request: Request, data: Any, path: str, *, versioned: bool = False) -> Response:
    """201 with the new resource and its ``Location`` (and its ETag when ``versioned``)."""
    headers = {"Location": location(request, path)}
    if versioned:
        headers["ETag"] = etag(int(data["version"]))
    return json_response(data, 201, headers)


def no_content() -> Response:
    """204."""
    return Response(status_code=204)


def etag(version: int) -> str:
    """The strong ETag of a versioned resource."""
    return f'"{version}"'


def with_etag(data: dict[str, Any], status: int = 200) -> Response:
    """Answer with a versioned resource and its ETag."""
    return json_response(data, status, {"ETag": etag(int(data["version"]))})


ANY = "*"


def if_match(request: Request, *, required: bool) -> str | frozenset[int] | None:
    """The versions ``If-Match`` accepts: ``None`` without the header (428 when required),
    ``"*"`` for any, else the set of versions it lists. Weak tags never match (RFC 9110
    13.1.1 compares strongly), and neither do tags this API did not give out: both 412."""
    header = request.headers.get("if-match")
    if header is None:
        if required:
            raise HttpProblem(
                428,
                "send If-Match with the ETag you read, so a concurrent change is not lost",
                field="If-Match",
            )
        return None
    tags = [tag.strip() for tag in header.split(",") if tag.strip()]
    if tags == [ANY]:
        return ANY
    versions = set()
    for tag in tags:
        value = tag[1:-1] if len(tag) >= 2 and tag[0] == tag[-1] == '"' else ""
        if not value.isdigit() or not 0 < int(value) < 2**31:
            raise HttpProblem(
                412, "If-Match holds no current strong ETag of this resource", field="If-Match"
            )
        versions.add(int(value))
    if not versions:
        raise HttpProblem(412, "If-Match holds no ETag", field="If-Match")
    return frozenset(versions)


async def expected_version(
    request: Request, *, required: bool, current: Callable[[], Awaitable[Any]]
) -> int | None:
    """The version an update may apply to, from ``If-Match``: the one it names, or (for ``*``
    or a list) the current version when ``If-Match`` accepts it; 412 otherwise."""
    accepted = if_match(request, required=required)
    if accepted is None:
        return None
    if isinstance(accepted, frozenset) and len(accepted) == 1:
        return next(iter(accepted))
    now = int((await current())["version"])
    if accepted == ANY or now in accepted:
        return now
    raise HttpProblem(412, "the resource changed since it was read", field="If-Match")


async def guarded(call: Any) -> Any:
    """Run an update guarded by If-Match: a stale version is a 412."""
    try:
        return await call
    except RemoteError as exc:
        if exc.code == "version_mismatch":
            raise HttpProblem(
                412, exc.message, code="precondition_failed", field="If-Match"
            ) from exc
        raise


def without(model: type[BaseModel], *names: str, name: str) -> type[BaseModel]:
    """A copy of a contract without some fields (those that come from the path or a header)."""
    fields: dict[str, Any] = {
        key: (info.annotation, info) for key, info in model.model_fields.items() if key not in names
    }
    made: type[BaseModel] = create_model(name, __base__=Contract, __doc__=model.__doc__, **fields)
    return made


def body_of(model: BaseModel | None, **extra: Any) -> dict[str, Any]:
    """The RPC body: the fields the client set, plus those from the path."""
    sent = model.model_dump(mode="json", exclude_unset=True) if model is not None else {}
    return {**sent, **to_jsonable_python(extra)}
