"""Errors a use case raises for the caller, each with an HTTP-like status and a stable code.

Request/reply handlers turn them into error replies; the gateway turns those into RFC 9457
problem documents. Anything else that escapes a handler is a 500 with a generic message.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any


class DomainError(Exception):
    """A refusal the caller can act on."""

    status = 400
    code = "bad_request"
    retry_after_s: int | None = None
    """When throttled: after how many seconds to try again."""

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code


class Invalid(DomainError):
    """The input breaks a rule; ``field`` names the culprit."""

    status = 422
    code = "invalid"


class Unauthorized(DomainError):
    """No valid credentials."""

    status = 401
    code = "unauthorized"


class Forbidden(DomainError):
    """Valid credentials, but the role does not allow this."""

    status = 403
    code = "forbidden"


class NotFound(DomainError):
    """No such thing, or the caller may not know it exists."""

    status = 404
    code = "not_found"


class Conflict(DomainError):
    """It clashes with what exists (duplicate, wrong state, stale version)."""

    status = 409
    code = "conflict"


class TooManyRequests(DomainError):
    """Throttled; try again after ``retry_after_s`` seconds (the gateway's ``Retry-After``)."""

    status = 429
    code = "too_many_requests"

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: int,
        code: str | None = None,
        field: str | None = None,
    ):
        super().__init__(message, code=code, field=field)
        self.retry_after_s = retry_after_s
        self.headers = {"Retry-After": str(retry_after_s)}


def invalid(errors: Sequence[Mapping[str, Any]], *, skip: Collection[str] = ()) -> Invalid:
    """The first of a validation's errors (pydantic's ``errors()``) as an Invalid naming the
    field, dotted; leading location parts in ``skip`` (such as ``body``) are left out."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid input"}
    parts = [str(p) for p in first.get("loc", ())]
    if parts and parts[0] in skip:
        parts = parts[1:]
    where = ".".join(parts) or None
    message = str(first.get("msg", "invalid input"))
    return Invalid(f"{where}: {message}" if where else message, field=where)
