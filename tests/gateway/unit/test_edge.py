"""The edge's pure parts: rate limits without Redis, suspicious text in bodies, If-Match parsing."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from compgrid_gateway.edge import bad_body_text
from compgrid_gateway.problems import HttpProblem
from compgrid_gateway.ratelimit import RateLimits
from compgrid_gateway.routes.common import if_match
from compgrid_runtime.embedded import free_port


async def test_limits_fall_back_to_this_process_when_redis_does_not_answer() -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    limits = RateLimits(nowhere, rate=1.0, burst=3, prefix="unit")
    taken = [await limits.take("a") for _ in range(4)]
    assert [t.allowed for t in taken] == [True, True, True, False]
    assert [t.remaining for t in taken] == [2, 1, 0, 0]
    assert 0 < taken[-1].retry_after_s <= 3
    assert (await limits.take("b")).allowed  # keys are independent


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
