"""Who asks comes before what they send: for every guarded operation, bad input (an id that is
no UUID, a body of the wrong shape, a query value of the wrong type) from a caller without a
valid token is a 401, and from a person without the platform role an operation is for, a 403;
only a caller who may call the operation learns what is wrong with the input."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.gateway.conftest import Stack
from tests.gateway.roles import OWNER_ONLY
from tests.gateway.test_auth_matrix import (
    API,
    GUARDED,
    SPEC,
    assert_problem,
    bearer,
    send,
    signed,
    stranger,
)

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis, pytest.mark.slow]

_TEMPLATE = re.compile(r"{(\w+)}")


def _kinds(schema: dict[str, Any]) -> set[str]:
    """The types and formats a parameter's schema allows (through ``anyOf``)."""
    found = {schema.get("type", ""), schema.get("format", "")}
    for option in schema.get("anyOf", []):
        found |= _kinds(option)
    return found


def bad_request(method: str, path: str) -> dict[str, Any] | None:
    """A request of the operation whose input is bad, or None when it takes no typed input."""
    operation = SPEC["paths"][API + path][method.lower()]
    parameters = {p["name"]: p for p in operation.get("parameters", [])}
    typed = [name for name, p in parameters.items() if _kinds(p["schema"]) & {"uuid", "integer"}]
    url = _TEMPLATE.sub(lambda m: "zzz" if m.group(1) in typed else "x", path)
    request: dict[str, Any] = {"method": method, "url": url, "headers": {}, "params": {}}
    if "requestBody" in operation:
        request["json"] = ["not", "an", "object"]
    elif queried := [name for name in typed if parameters[name]["in"] == "query"]:
        request["params"] = {queried[0]: "zzz"}
    elif not typed:  # only free-form names in the path (a budget code, a datacenter)
        return None
    return request


BAD_INPUT = [op for op in GUARDED if bad_request(*op) is not None]


def _op_id(op: tuple[str, str]) -> str:
    return f"{op[0]} {op[1]}"


def test_most_operations_take_typed_input() -> None:
    assert len(BAD_INPUT) > 60


@pytest.mark.parametrize("op", BAD_INPUT, ids=_op_id)
async def test_bad_input_without_a_valid_token_is_a_401(
    stack: Stack, client: httpx.AsyncClient, op: tuple[str, str]
) -> None:
    request = bad_request(*op)
    assert request is not None
    admin = jwt.decode(stack.token("admin"), options={"verify_signature": False})
    forged = jwt.encode(
        {**admin, "jti": uuid.uuid4().hex},
        Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
        headers={"kid": jwt.get_unverified_header(stack.token("admin"))["kid"]},
    )
    for headers in ({}, bearer("not.a.token"), bearer(forged)):
        response = await send(client, **signed(request, headers | stranger()))
        assert_problem(response, 401)
        assert response.headers["www-authenticate"].lower().startswith("bearer")
    allowed = await send(client, **signed(request, stack.headers("admin")))
    assert_problem(allowed, 400, 422)  # the input is bad indeed


@pytest.mark.parametrize("op", [op for op in OWNER_ONLY if op in BAD_INPUT], ids=_op_id)
async def test_bad_input_without_the_role_is_a_403(
    stack: Stack, client: httpx.AsyncClient, op: tuple[str, str]
) -> None:
    request = bad_request(*op)
    assert request is not None
    response = await send(client, **signed(request, stack.headers("researcher")))
    body = assert_problem(response, 403)
    assert "schema" not in body["detail"]
    assert body["field"] is None


async def test_the_examples_of_the_issue(stack: Stack, client: httpx.AsyncClient) -> None:
    anonymous = await client.get("/instances/zzz")
    incomplete = await client.post(
        "/price-tiers", json={"name": "cheap"}, headers=stack.headers("researcher")
    )
    assert_problem(anonymous, 401)
    assert_problem(incomplete, 403)


async def test_the_document_names_the_roles_of_owner_operations(client: httpx.AsyncClient) -> None:
    live = (await client.get("/openapi.json")).json()
    for method, path in OWNER_ONLY:
        roles = live["paths"][API + path][method.lower()].get("x-roles")
        assert roles, f"{method} {path} declares no roles"
        assert "admin" in roles
        assert not {"pi", "member", "researcher"} & set(roles)
