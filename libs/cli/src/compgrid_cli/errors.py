"""Failures as exit codes scripts can rely on.

Every failure of a command becomes a ``CliError`` with one of the ``ExitCode`` values. An API
problem (RFC 9457) maps by its status: 400/413/415/422/428 are usage errors, 401/403 mean not
signed in or not allowed, 404 not found, 409/412 a conflict with the current state (the
operation failed), 429/502/503/504 a service that cannot answer now. One refinement: a 404 whose
``field`` names a field of the request body says that the body refers to something that does
not exist (an unknown instance type or image), which is bad input, so it is a usage error.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import Any

import httpx


class ExitCode(IntEnum):
    """What a command's exit status means."""

    OK = 0
    FAILED = 1
    USAGE = 2
    AUTH = 3
    NOT_FOUND = 4
    UNAVAILABLE = 5


EXIT_CODE_MEANINGS = {
    ExitCode.OK: "success",
    ExitCode.FAILED: "the operation failed (instance failed or rejected, a conflict)",
    ExitCode.USAGE: "bad arguments or input the API refused (400, 422)",
    ExitCode.AUTH: "not signed in, session expired or not allowed (401, 403)",
    ExitCode.NOT_FOUND: "no such resource (404)",
    ExitCode.UNAVAILABLE: "the service is unreachable, busy or too slow (503, 504, time-outs)",
}

_BY_STATUS = {
    400: ExitCode.USAGE,
    401: ExitCode.AUTH,
    403: ExitCode.AUTH,
    404: ExitCode.NOT_FOUND,
    409: ExitCode.FAILED,
    412: ExitCode.FAILED,
    413: ExitCode.USAGE,
    415: ExitCode.USAGE,
    422: ExitCode.USAGE,
    428: ExitCode.USAGE,
    429: ExitCode.UNAVAILABLE,
    502: ExitCode.UNAVAILABLE,
    503: ExitCode.UNAVAILABLE,
    504: ExitCode.UNAVAILABLE,
}


class CliError(Exception):
    """A command failed: what to tell the user and which exit code to end with."""

    def __init__(
        self,
        detail: str,
        exit_code: ExitCode = ExitCode.FAILED,
        *,
        code: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.exit_code = exit_code
        self.code = code
        self.field = field

    def __str__(self) -> str:
        text = f"{self.detail} ({self.code})" if self.code else self.detail
        return f"{text} [field: {self.field}]" if self.field else text


def exit_code_for(status: int, field: str | None = None, sent: Any = None) -> ExitCode:
    """The exit code of an API answer with an error status."""
    if status == 404 and field and isinstance(sent, Mapping) and field.split(".")[0] in sent:
        return ExitCode.USAGE
    return _BY_STATUS.get(status, ExitCode.FAILED)


def problem_error(response: httpx.Response, sent: Any = None) -> CliError:
    """The ``CliError`` for an error answer (a problem document, or anything else)."""
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        problem = {"detail": response.text.strip()[:300] or response.reason_phrase}
    field = problem.get("field") or None
    return CliError(
        str(problem.get("detail") or problem.get("title") or response.reason_phrase),
        exit_code_for(response.status_code, field, sent),
        code=str(problem.get("code") or f"http_{response.status_code}"),
        field=field,
    )


def transport_error(url: str, exc: httpx.TransportError) -> CliError:
    """The ``CliError`` for a request that got no answer at all."""
    if isinstance(exc, httpx.TimeoutException):
        return CliError(f"{url} did not answer in time", ExitCode.UNAVAILABLE, code="timeout")
    reason = str(exc) or type(exc).__name__
    return CliError(f"cannot reach {url}: {reason}", ExitCode.UNAVAILABLE, code="unreachable")
