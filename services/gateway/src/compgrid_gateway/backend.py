"""Asking the owning services over NATS request/reply, with the caller's token forwarded.

The gateway decides nothing about who may see what: it passes the bearer token, the client's
address and the request id along, and the owning service answers or refuses. A service that
nothing listens for is a 503; one that does not answer within the timeout is a 504.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from nats.aio.client import Client as NatsClient
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from compgrid_events.rpc import RpcError, rpc_subject
from compgrid_gateway.problems import TimedOut, Unavailable
from compgrid_runtime.errors import Unauthorized
from compgrid_runtime.rpc import RemoteError
from compgrid_runtime.tokens import Principal, TokenVerifier
from compgrid_runtime.tracing import inject_headers

_OK_PREFIX = b'{"ok":true,"data":'
_OK_SUFFIX = b',"error":null}'
"""How a successful reply is written (``RpcReply.model_dump_json``): its data sits between."""


def _data(raw: bytes) -> Any:
    reply = json.loads(raw)
    if not reply.get("ok"):
        raise RemoteError(RpcError.model_validate(reply.get("error")))
    return reply.get("data")


@dataclass(frozen=True)
class Backend:
    """The bus connection and how long to wait for answers."""

    nc: NatsClient
    verifier: TokenVerifier
    timeout_s: float
    slow_timeout_s: float


def bearer(authorization: str | None) -> str | None:
    """The bearer token of an ``Authorization`` header, if it carries one."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


@dataclass(frozen=True)
class Ctx:
    """One HTTP request as the services see it: who asks (their token) and from where."""

    backend: Backend
    token: str | None
    client_address: str | None
    request_id: str | None

    async def ask(
        self,
        service: str,
        operation: str,
        body: BaseModel | dict[str, Any] | None = None,
        *,
        slow: bool = False,
    ) -> Any:
        """Return the owning service's answer, or raise its refusal."""
        return _data(await self._request(service, operation, body, slow=slow))

    async def relay(
        self,
        service: str,
        operation: str,
        body: BaseModel | dict[str, Any] | None = None,
        *,
        slow: bool = False,
    ) -> bytes:
        """The answer's JSON as the service wrote it, without decoding and encoding it again
        (for answers passed through unchanged); refusals raise as with :meth:`ask`."""
        raw = await self._request(service, operation, body, slow=slow)
        if raw.startswith(_OK_PREFIX) and raw.endswith(_OK_SUFFIX):
            return raw[len(_OK_PREFIX) : -len(_OK_SUFFIX)]
        return json.dumps(_data(raw), separators=(",", ":")).encode()

    async def _request(
        self,
        service: str,
        operation: str,
        body: BaseModel | dict[str, Any] | None,
        *,
        slow: bool,
    ) -> bytes:
        payload = (
            body.model_dump(mode="json")
            if isinstance(body, BaseModel)
            else to_jsonable_python(body or {})
        )
        envelope = {
            "token": self.token,
            "client_address": self.client_address,
            "request_id": self.request_id,
            "body": payload,
        }
        timeout = self.backend.slow_timeout_s if slow else self.backend.timeout_s
        try:
            msg = await self.backend.nc.request(
                rpc_subject(service, operation),
                json.dumps(envelope).encode(),
                timeout=timeout,
                headers=inject_headers() or None,
            )
        except NoRespondersError as exc:
            raise Unavailable(f"the {service} service is not running; try again shortly") from exc
        except (NatsTimeoutError, TimeoutError) as exc:
            raise TimedOut(f"the {service} service did not answer within {timeout:g} s") from exc
        data: bytes = msg.data
        return data

    def principal(self) -> Principal:
        """Verify the token here (for what the edge itself keys by the caller)."""
        if self.token is None:
            raise Unauthorized("authentication required")
        return self.backend.verifier.verify(self.token)


async def context(request: Request) -> Ctx:
    """Build the request's context (a FastAPI dependency; async, so it runs on the loop)."""
    client = request.client.host if request.client else None
    return Ctx(
        backend=request.app.state.backend,
        token=bearer(request.headers.get("authorization")),
        client_address=client,
        request_id=request.scope.get("state", {}).get("request_id"),
    )


CtxDep = Annotated[Ctx, Depends(context)]
