"""Every integer parameter of the API at and past the edges of a 64-bit integer (and anywhere
else, drawn by Hypothesis): a value the API cannot hold is refused as input, never a 5xx."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.gateway.conftest import Stack
from tests.gateway.test_auth_matrix import API, SPEC, World, assert_problem

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis, pytest.mark.slow]

INT64 = 2**63
EDGES = [-INT64 - 1, -INT64, -1, 0, INT64 - 1, INT64, 10**40]


def _kinds(schema: dict[str, Any]) -> set[str]:
    found = {schema.get("type", "")}
    for option in schema.get("anyOf", []):
        found |= _kinds(option)
    return found


INTEGER_PARAMETERS = [
    (path.removeprefix(API), parameter["name"], operation)
    for path, item in SPEC["paths"].items()
    for method, operation in item.items()
    if method == "get" and "{" not in path
    for parameter in operation.get("parameters", [])
    if parameter["in"] == "query" and "integer" in _kinds(parameter["schema"])
]
NAMES = [f"{path}?{name}" for path, name, _ in INTEGER_PARAMETERS]


def _ask(stack: Stack, path: str, name: str, operation: dict[str, Any], value: int) -> None:
    """The answer to one value is no server error, and a refusal is a problem document."""
    world = World({})
    params: dict[str, Any] = {
        p["name"]: world.sample(p["schema"], p["name"])
        for p in operation.get("parameters", [])
        if p["in"] == "query" and p.get("required")
    }
    params[name] = str(value)
    for _ in range(10):
        response = httpx.get(
            f"{stack.api}{path}", params=params, headers=stack.headers("admin"), timeout=30
        )
        if response.status_code != 429:
            break
    assert response.status_code < 500, f"{path}?{name}={value}: {response.text}"
    if response.status_code >= 400:
        assert_problem(response, response.status_code)


def test_some_integer_parameters_are_found() -> None:
    assert ("/audit", "before_id") in {(path, name) for path, name, _ in INTEGER_PARAMETERS}


@pytest.mark.parametrize("value", EDGES)
@pytest.mark.parametrize(
    ("path", "name", "operation"),
    INTEGER_PARAMETERS,
    ids=[f"{p}?{n}" for p, n, _ in INTEGER_PARAMETERS],
)
def test_int64_edges_are_never_a_server_error(
    stack: Stack, path: str, name: str, operation: dict[str, Any], value: int
) -> None:
    _ask(stack, path, name, operation, value)


@pytest.mark.parametrize(
    ("path", "name", "operation"),
    INTEGER_PARAMETERS,
    ids=[f"{p}?{n}" for p, n, _ in INTEGER_PARAMETERS],
)
def test_any_integer_is_never_a_server_error(
    stack: Stack, path: str, name: str, operation: dict[str, Any]
) -> None:
    @settings(max_examples=25, deadline=None, derandomize=True, database=None)
    @given(st.integers())
    def probe(value: int) -> None:
        _ask(stack, path, name, operation, value)

    probe()


def test_an_audit_cursor_past_int64_is_refused_as_input(stack: Stack) -> None:
    response = httpx.get(
        f"{stack.api}/audit",
        params={"before_id": str(INT64)},
        headers=stack.headers("admin"),
        timeout=30,
    )
    body = assert_problem(response, 422)
    assert body["field"] == "before_id"
