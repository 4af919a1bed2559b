"""``Idempotency-Key`` on POSTs: a retried request gets the first answer instead of acting twice.

The first request with a key claims it in Redis (``SET NX``) for the caller (the token's
subject, so a refreshed token still matches); its answer (status, ``Location``, body) is kept
for ``idempotency_ttl_s``. A retry with the same body replays that answer with
``Idempotent-Replayed: true``; the same key with another body is refused (422); a retry while
the first is still running gets 409. Answers 500 and above are not kept: the key is released so
the client may try again.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from redis.asyncio import Redis
from starlette.responses import Response

from compgrid_gateway.backend import Backend, bearer
from compgrid_gateway.edge import ASGIApp, Message, Receive, Scope, Send
from compgrid_gateway.problems import problem
from compgrid_runtime.errors import Unauthorized

HEADER = b"idempotency-key"
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_KEPT_HEADERS = (b"location", b"etag", b"content-type")
PENDING = b"pending"


class Idempotency:
    """Keeps the first answer to each (caller, key) and replays it."""

    def __init__(self, app: ASGIApp, *, redis: Redis, prefix: str, ttl_s: int) -> None:
        self.app = app
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        raw_key = headers.get(HEADER)
        if raw_key is None:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        rid = scope.get("state", {}).get("request_id")
        key = raw_key.decode("latin-1")
        if not _KEY.match(key):
            await problem(
                400,
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
                field="Idempotency-Key",
                instance=path,
                request_id=rid,
            )(scope, receive, send)
            return
        subject = self._subject(scope, headers)
        if subject is None:  # anonymous or bad token: the service will refuse it anyway
            await self.app(scope, receive, send)
            return
        body: bytes = scope.get("state", {}).get("body", b"")
        fingerprint = hashlib.sha256(path.encode() + b"\n" + body).hexdigest()
        name = self.prefix + hashlib.sha256(f"{subject}\n{key}".encode()).hexdigest()
        claimed = await self.redis.set(name, PENDING, nx=True, ex=self.ttl_s)
        if not claimed:
            replay = await self._replay(name, fingerprint, path, rid)
            await replay(scope, receive, send)
            return
        await self._first(scope, receive, send, name, fingerprint)

    def _subject(self, scope: Scope, headers: dict[bytes, bytes]) -> str | None:
        backend: Backend = scope["app"].state.backend
        token = bearer(headers.get(b"authorization", b"").decode("latin-1"))
        if token is None:
            return None
        try:
            return str(backend.verifier.verify(token).user_id)
        except Unauthorized:
            return None

    async def _first(
        self, scope: Scope, receive: Receive, send: Send, name: str, fingerprint: str
    ) -> None:
        start: Message = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, capture)
        except BaseException:
            await self.redis.delete(name)
            raise
        status = int(start.get("status", 500))
        if status >= 500:
            await self.redis.delete(name)
            return
        kept = {
            k.decode(): v.decode("latin-1")
            for k, v in start.get("headers", [])
            if k.lower() in _KEPT_HEADERS
        }
        record = {
            "fingerprint": fingerprint,
            "status": status,
            "headers": kept,
            "body": b"".join(chunks).decode("utf-8", errors="replace"),
        }
        await self.redis.set(name, json.dumps(record), ex=self.ttl_s)

    async def _replay(self, name: str, fingerprint: str, path: str, rid: str | None) -> Any:
        stored = await self.redis.get(name)
        if stored is None or stored == PENDING:
            return problem(
                409,
                "a request with this Idempotency-Key is still being processed; retry shortly",
                code="idempotency_in_progress",
                instance=path,
                request_id=rid,
                headers={"Retry-After": "1"},
            )
        record = json.loads(stored)
        if record["fingerprint"] != fingerprint:
            return problem(
                422,
                "this Idempotency-Key was used with a different request",
                code="idempotency_key_reused",
                field="Idempotency-Key",
                instance=path,
                request_id=rid,
            )
        headers = {k: v for k, v in record["headers"].items() if k != "content-type"}
        headers["Idempotent-Replayed"] = "true"
        return Response(
            record["body"],
            status_code=record["status"],
            headers=headers,
            media_type=record["headers"].get("content-type"),
        )
