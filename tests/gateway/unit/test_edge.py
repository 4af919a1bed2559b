"""The edge's pure parts: rate limits without Redis, suspicious text in bodies, If-Match parsing."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import MutableMapping
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm
from starlette.requests import Request

from compgrid_gateway.edge import Edge, bad_body_text
from compgrid_gateway.problems import HttpProblem
from compgrid_gateway.ratelimit import RateLimits, moving_window
from compgrid_gateway.routes.common import if_match
from compgrid_runtime.embedded import free_port
from compgrid_runtime.tokens import TokenVerifier

KEY = Ed25519PrivateKey.generate()


async def test_limits_fall_back_to_this_process_when_redis_does_not_answer() -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    limits = RateLimits(nowhere, rate=1.0, burst=3, prefix="unit")
    taken = [await limits.take("a") for _ in range(4)]
    assert [t.allowed for t in taken] == [True, True, True, False]
    assert [t.remaining for t in taken] == [2, 1, 0, 0]
    assert 0 < taken[-1].retry_after_s <= 3
    assert (await limits.take("b")).allowed  # keys are independent


@pytest.mark.parametrize(
    ("rate", "burst", "amount", "window"),
    [(100, 50, 100, 1), (50, 200, 200, 4), (0.2, 6, 6, 30), (0.7, 6, 7, 10), (2.5, 1, 5, 2)],
)
def test_the_enforced_rate_is_the_configured_one(
    rate: float, burst: int, amount: int, window: int
) -> None:
    item = moving_window(rate, burst)
    assert (item.amount, item.multiples) == (amount, window)
    assert item.amount / item.multiples == rate
    assert item.amount >= burst


def _token(session: str) -> str:
    now = int(time.time())
    claims = {
        "iss": "compgrid",
        "aud": "compgrid",
        "sub": str(uuid.uuid4()),
        "typ": "access",
        "iat": now,
        "exp": now + 900,
        "jti": uuid.uuid4().hex,
        "sid": session,
    }
    return jwt.encode(claims, KEY, algorithm="EdDSA", headers={"kid": "k1"})


def _edge(burst: int) -> Edge:
    async def ok(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    verifier = TokenVerifier()
    jwk = {**json.loads(OKPAlgorithm.to_jwk(KEY.public_key())), "kid": "k1", "alg": "EdDSA"}
    verifier.set_jwks({"keys": [jwk]})
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    limits = RateLimits(nowhere, rate=0.1, burst=burst, prefix="unit")
    return Edge(ok, max_body_bytes=1024, limits=limits, verifier=verifier)


async def _status(edge: Edge, token: str | None, address: str = "10.0.0.1") -> int:
    headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/api/v1/images",
        "headers": headers,
        "client": (address, 40000),
    }
    started: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            started.append(message["status"])

    await edge(scope, receive, send)
    return started[0]


async def test_made_up_tokens_count_against_their_address() -> None:
    edge = _edge(burst=3)
    made_up = [await _status(edge, uuid.uuid4().hex) for _ in range(3)]
    assert made_up == [200, 200, 200]
    assert await _status(edge, uuid.uuid4().hex) == 429
    assert await _status(edge, None) == 429  # the same bucket as no token at all
    assert await _status(edge, uuid.uuid4().hex, address="10.0.0.2") == 200


async def test_a_session_counts_on_its_own_across_its_tokens() -> None:
    edge = _edge(burst=2)
    assert [await _status(edge, _token("s1")) for _ in range(2)] == [200, 200]
    assert await _status(edge, _token("s1")) == 429  # a fresh token of the session is no escape
    assert await _status(edge, _token("s2")) == 200
    assert await _status(edge, None) == 200  # the address's own bucket is untouched


@pytest.mark.parametrize(
    ("body", "bad"),
    [
        (b'{"name": "ok"}', False),
        ('{"name": "\U0001f600 \u05e9\u05dc\u05d5\u05dd e\u0301"}'.encode(), False),
        (b'{"name": "\\ud83d\\ude00"}', False),  # an escaped pair is a valid character
        (b'{"name": "a\\u0000b"}', True),
        (b'{"name": "\\ud800"}', True),
        (b'{"nested": {"list": ["\\udfff"]}}', True),
        (b'{"\\u0000key": 1}', True),
        (b'{"name": "a\x00b"}', True),
        (b"not json at all \\u0000", False),  # the parser names it: malformed JSON
    ],
)
def test_bodies_with_text_no_column_can_hold_are_flagged(body: bytes, bad: bool) -> None:
    assert bad_body_text(body) is bad


def _request(if_match_value: str | None) -> Request:
    headers = [] if if_match_value is None else [(b"if-match", if_match_value.encode())]
    return Request({"type": "http", "method": "PATCH", "headers": headers, "path": "/"})


@pytest.mark.parametrize(
    ("value", "versions"),
    [('"3"', {3}), ('"3", "12"', {3, 12}), ('"3","4" ,"5"', {3, 4, 5})],
)
def test_if_match_reads_the_versions(value: str, versions: set[int]) -> None:
    assert if_match(_request(value), required=True) == frozenset(versions)


def test_if_match_any() -> None:
    assert if_match(_request("*"), required=True) == "*"


def test_if_match_missing_is_428_when_required_and_none_otherwise() -> None:
    assert if_match(_request(None), required=False) is None
    with pytest.raises(HttpProblem) as raised:
        if_match(_request(None), required=True)
    assert raised.value.status == 428


@pytest.mark.parametrize(
    "value", ['"abc"', '"0"', '"-1"', '"99999999999"', "7", 'W/"12"', '"3", W/"4"', ","]
)
def test_if_match_that_is_no_version_is_412(value: str) -> None:
    with pytest.raises(HttpProblem) as raised:
        if_match(_request(value), required=False)
    assert raised.value.status == 412
