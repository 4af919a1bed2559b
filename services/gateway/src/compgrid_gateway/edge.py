"""What every request passes first: request ids, size and media-type limits, rate limiting and
security headers. One plain ASGI middleware, so the hot path stays cheap.

Rate limits are per session of a bearer token that verifies here (per client address without
one, so made-up tokens share their address's limit) and shared by every gateway process through
Redis (see ``ratelimit``).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from compgrid_gateway.backend import bearer
from compgrid_gateway.problems import problem
from compgrid_gateway.ratelimit import RateLimits
from compgrid_runtime.errors import Unauthorized
from compgrid_runtime.tokens import TokenVerifier

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")
_SUSPECT = re.compile(rb"\x00|\\u0000|\\u[dD][89a-fA-F]")
_BODY_METHODS = {"POST", "PUT", "PATCH"}
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
API_ONLY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"cache-control", b"no-store"),
]
HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")


def _has_bad_text(value: Any) -> bool:
    """True when a decoded JSON value holds a NUL or a lone surrogate anywhere."""
    if isinstance(value, str):
        if "\x00" in value:
            return True
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_bad_text(k) or _has_bad_text(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_bad_text(v) for v in value)
    return False


def bad_body_text(body: bytes) -> bool:
    """Whether a JSON body carries text no database column can hold (checked only when a fast
    scan finds a suspect escape; invalid JSON is left for the parser to name)."""
    if not _SUSPECT.search(body):
        return False
    try:
        return _has_bad_text(json.loads(body))
    except ValueError:
        return b"\x00" in body


class Edge:
    """The gateway's outermost layer."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        limits: RateLimits,
        verifier: TokenVerifier,
        hsts: bool = False,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.limits = limits
        self.verifier = verifier
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        supplied = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = supplied if _REQUEST_ID.match(supplied) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        path: str = scope["path"]
        api = path.startswith("/api/")
        extra = [(b"x-request-id", request_id.encode()), *SECURITY_HEADERS]
        if api:
            extra += API_ONLY_HEADERS
        if self.hsts:
            extra.append(HSTS)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                own = list(message.get("headers", []))
                named = {name.lower() for name, _ in own}  # a page's own policy wins
                message["headers"] = own + [h for h in extra if h[0] not in named]
            await send(message)

        refusal = self._refusal(scope, headers, path, request_id)
        if refusal is None and api:
            refusal, limit_headers = await self._throttle(scope, headers, path, request_id)
            extra += limit_headers
        if refusal is None and scope["method"] in _BODY_METHODS:
            refusal, receive = await self._read_body(scope, headers, receive, path, request_id)
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _refusal(
        self, scope: Scope, headers: dict[bytes, bytes], path: str, request_id: str
    ) -> Any:
        query: bytes = scope.get("query_string", b"")
        if "\x00" in path or b"%00" in query.lower():
            return problem(
                400, "the URL holds a NUL character", instance=path, request_id=request_id
            )
        length = headers.get(b"content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                return problem(400, "Content-Length is not a number", request_id=request_id)
            if size > self.max_body_bytes:
                return self._too_large(path, request_id)
        return None

    def _too_large(self, path: str, request_id: str) -> Any:
        return problem(
            413,
            f"the body is larger than {self.max_body_bytes} bytes",
            instance=path,
            request_id=request_id,
        )

    async def _throttle(
        self, scope: Scope, headers: dict[bytes, bytes], path: str, request_id: str
    ) -> tuple[Any, list[tuple[bytes, bytes]]]:
        taken = await self.limits.take(self._caller(scope, headers))
        limit_headers = [
            (b"ratelimit-limit", str(self.limits.burst).encode()),
            (b"ratelimit-remaining", str(taken.remaining).encode()),
        ]
        if taken.allowed:
            return None, limit_headers
        retry = str(max(1, math.ceil(taken.retry_after_s)))
        return (
            problem(
                429,
                f"too many requests; retry after {retry} s",
                instance=path,
                request_id=request_id,
                headers={"Retry-After": retry},
            ),
            limit_headers,
        )

    def _caller(self, scope: Scope, headers: dict[bytes, bytes]) -> str:
        """Whose limit a request counts against: the session (or API token) of a token that
        verifies here (locally, no network), else the client's address."""
        token = bearer(headers.get(b"authorization", b"").decode("latin-1"))
        if token is not None:
            try:
                principal = self.verifier.verify(token)
            except Unauthorized:
                pass
            else:
                return "t:" + (principal.session_id or principal.token_id)
        client = scope.get("client")
        return "a:" + (client[0] if client else "?")

    async def _read_body(
        self, scope: Scope, headers: dict[bytes, bytes], receive: Receive, path: str, rid: str
    ) -> tuple[Any, Receive]:
        """Read the whole body (it is small: the limit is enforced while reading), check its
        media type and text, and hand the application a replay of it."""
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return problem(400, "the client went away", request_id=rid), receive
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return self._too_large(path, rid), receive
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        scope.setdefault("state", {})["body"] = body
        if body:
            media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if not (media == b"application/json" or media.endswith(b"+json")):
                shown = media.decode("latin-1") or "none"
                return (
                    problem(
                        415,
                        f"send JSON (Content-Type: application/json), not {shown}",
                        instance=path,
                        request_id=rid,
                    ),
                    receive,
                )
            try:
                body.decode("utf-8")
            except UnicodeDecodeError:
                return (
                    problem(
                        400,
                        "the body is not UTF-8 (JSON must be)",
                        code="malformed_json",
                        instance=path,
                        request_id=rid,
                    ),
                    receive,
                )
            if bad_body_text(body):
                return (
                    problem(
                        400,
                        "the body holds a NUL character or a lone surrogate",
                        code="bad_text",
                        instance=path,
                        request_id=rid,
                    ),
                    receive,
                )
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return None, replay
