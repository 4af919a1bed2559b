"""Request/reply over NATS for what the gateway needs answered now.

A service registers one handler per operation on ``rpc.<service>.<operation>`` (a queue group,
so every process of the service shares the load). The runtime parses the envelope, verifies
the forwarded token, validates the body against the handler's model and turns domain errors
into error replies; handlers see only a :class:`Caller` and a typed body.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage
from nats.aio.client import Client as NatsClient
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ValidationError

from compgrid_events.rpc import RpcError, RpcReply, RpcRequest, rpc_subject
from compgrid_runtime.errors import DomainError, Unauthorized, invalid
from compgrid_runtime.logs import get_logger
from compgrid_runtime.tokens import Principal, TokenVerifier
from compgrid_runtime.tracing import extract_context, inject_headers, tracer

log = get_logger(__name__)


@dataclass(frozen=True)
class Caller:
    """Who sent a request, from where; ``principal`` is None for anonymous callers."""

    principal: Principal | None
    client_address: str | None = None
    request_id: str | None = None
    token: str | None = field(default=None, repr=False)
    """The caller's verified token, to ask an owning service on the caller's behalf."""

    def require(self) -> Principal:
        """Return the principal or refuse an anonymous caller."""
        if self.principal is None:
            raise Unauthorized("authentication required")
        return self.principal


Handler = Callable[[Caller, Any], Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    """One operation: its subject, handler, body model and whether a token is required."""

    subject: str
    handler: Handler
    body: type[BaseModel] | None
    public: bool


class RemoteError(DomainError):
    """An error reply from another service, keeping its status and code."""

    def __init__(self, error: RpcError) -> None:
        super().__init__(error.message, code=error.code, field=error.field)
        self.status = error.status
        self.retry_after_s = error.retry_after_s
        if error.retry_after_s is not None:  # the gateway answers it as Retry-After
            self.headers = {"Retry-After": str(error.retry_after_s)}


class ServiceUnavailable(DomainError):
    """The owning service did not answer in time (or nothing listens)."""

    status = 503
    code = "service_unavailable"


class RpcServer:
    """The request/reply operations of one service."""

    def __init__(
        self, service: str, verifier: TokenVerifier | None, *, max_workers: int = 1
    ) -> None:
        self._service = service
        self._verifier = verifier
        self._max_workers = max_workers
        self.routes: list[Route] = []

    def route(
        self,
        operation: str,
        handler: Handler,
        body: type[BaseModel] | None = None,
        *,
        public: bool = False,
    ) -> None:
        """Register a handler for ``rpc.<service>.<operation>``."""
        self.routes.append(Route(rpc_subject(self._service, operation), handler, body, public))

    def bind(self, broker: NatsBroker) -> None:
        """Subscribe every route (queue group per service); call before the broker starts.

        Each operation answers up to ``max_workers`` requests at once in this process, so one
        slow request does not hold up the others.
        """
        for route in self.routes:
            subscriber = broker.subscriber(  # type: ignore[call-overload]
                route.subject,
                queue=f"{self._service}-rpc",
                no_reply=True,
                title=route.subject,
                description=route.handler.__doc__,
                **({"max_workers": self._max_workers} if self._max_workers > 1 else {}),
            )
            subscriber(self._entry(route))

    def _entry(self, route: Route) -> Callable[..., Awaitable[None]]:
        async def on_request(message: NatsMessage) -> None:
            raw = message.raw_message
            with tracer.start_as_current_span(
                route.subject, context=extract_context(raw.headers), kind=SpanKind.SERVER
            ):
                reply = await self.handle(route, raw.data)
            if raw.reply:
                await raw.respond(reply.model_dump_json().encode())

        on_request.__name__ = route.subject.replace(".", "_")
        return on_request

    async def handle(self, route: Route, data: bytes) -> RpcReply:
        """Answer one request (never raises)."""
        try:
            request = RpcRequest.model_validate_json(data)
        except ValidationError:
            error = RpcError(status=400, code="bad_request", message="malformed request envelope")
            return RpcReply(ok=False, error=error)
        try:
            caller = self._caller(route, request)
            body = _validate(route.body, request.body)
            result = await route.handler(caller, body)
        except DomainError as exc:
            return _refusal(exc)
        except ValidationError as exc:
            # a value derived from valid input breaks a contract (e.g. a date out of range)
            log.warning("derived value refused", subject=route.subject, error=str(exc))
            return _refusal(invalid(exc.errors()))
        except Exception:
            log.exception("request failed", subject=route.subject)
            error = RpcError(status=500, code="internal", message="internal error")
            return RpcReply(ok=False, error=error)
        return RpcReply(ok=True, data=_plain(result))

    def _caller(self, route: Route, request: RpcRequest) -> Caller:
        principal = None
        if request.token and self._verifier is not None:
            try:
                principal = self._verifier.verify(request.token)
            except Unauthorized:
                if not route.public:
                    raise
        elif not route.public:
            raise Unauthorized("authentication required")
        token = request.token if principal is not None else None
        return Caller(principal, request.client_address, request.request_id, token)


def _validate(model: type[BaseModel] | None, body: dict[str, Any]) -> Any:
    if model is None:
        return body
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise invalid(exc.errors()) from exc


def _refusal(exc: DomainError) -> RpcReply:
    error = RpcError(
        status=exc.status,
        code=exc.code,
        message=exc.message,
        field=exc.field,
        retry_after_s=exc.retry_after_s,
    )
    return RpcReply(ok=False, error=error)


def _plain(result: Any) -> Any:
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    if isinstance(result, list):
        return [_plain(item) for item in result]
    return result


class Ask(Protocol):
    """Ask another service's request/reply operation on a caller's behalf."""

    def __call__(
        self, service: str, operation: str, body: dict[str, Any], *, token: str
    ) -> Awaitable[Any]: ...


async def call(
    nc: NatsClient,
    service: str,
    operation: str,
    body: BaseModel | dict[str, Any] | None = None,
    *,
    token: str | None = None,
    client_address: str | None = None,
    request_id: str | None = None,
    timeout_s: float = 5.0,
) -> Any:
    """Ask another service; return its data or raise its error (503 when it does not answer)."""
    payload = body.model_dump(mode="json") if isinstance(body, BaseModel) else (body or {})
    request = RpcRequest(
        token=token, client_address=client_address, request_id=request_id, body=payload
    )
    try:
        msg = await nc.request(
            rpc_subject(service, operation),
            request.model_dump_json().encode(),
            timeout=timeout_s,
            headers=inject_headers() or None,
        )
    except (NatsTimeoutError, NoRespondersError, TimeoutError) as exc:
        raise ServiceUnavailable(f"{service} did not answer") from exc
    reply = RpcReply.model_validate_json(msg.data)
    if not reply.ok and reply.error is not None:
        raise RemoteError(reply.error)
    return reply.data
