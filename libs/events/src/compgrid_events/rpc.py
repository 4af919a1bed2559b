"""The request/reply envelope: what the gateway sends a service over NATS and what comes back.

Request/reply subjects are ``rpc.<service>.<operation>``; they are never captured by a stream.
The caller's token travels inside the envelope so that the owning service decides.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from compgrid_events.base import Contract


class RpcRequest(Contract):
    """A query or command for one service, with who asks and from where."""

    token: str | None = None
    client_address: str | None = Field(default=None, max_length=100)
    request_id: str | None = Field(default=None, max_length=100)
    body: dict[str, Any] = Field(default_factory=dict)


class RpcError(Contract):
    """Why a request was refused: an HTTP-like status, a stable code and a message."""

    status: int = Field(ge=400, le=599)
    code: str
    message: str
    field: str | None = None
    retry_after_s: int | None = Field(default=None, ge=0, description="when to try again")


class RpcReply(Contract):
    """The answer: ``data`` when ``ok``, else ``error``."""

    ok: bool
    data: Any = None
    error: RpcError | None = None


def rpc_subject(service: str, operation: str) -> str:
    """Return the request/reply subject of one operation."""
    return f"rpc.{service}.{operation}"
