"""Who may call what, for every operation in the OpenAPI document: without a token, with a
token that is expired or forged, as a person without the owner's role, and across projects.

Every request carries path ids that exist and a body that is valid against the document, so a
refusal can only come from the caller's credentials, never from a missing resource or bad input.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from compgrid_auth.adapters.keys import TokenSigner
from compgrid_auth.config import Settings as AuthSettings
from tests.gateway.conftest import Stack
from tests.gateway.roles import OWNER_ONLY

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis, pytest.mark.slow]

API = "/api/v1"
SPEC: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "openapi.json").read_text()
)
PUBLIC = frozenset(
    {
        "/auth/login",
        "/auth/refresh",
        "/auth/logout",
        "/auth/token",
        "/auth/register",
        "/auth/password-reset",
        "/auth/password-reset/confirm",
        "/auth/invitations/accept",
    }
)
OPERATIONS = sorted(
    (method.upper(), path.removeprefix(API))
    for path, operations in SPEC["paths"].items()
    if path.startswith(API + "/")
    for method in operations
)
GUARDED = [op for op in OPERATIONS if op[1] not in PUBLIC]
PROBLEM_FIELDS = {"type", "title", "status", "detail", "code", "field", "instance", "request_id"}
PROBLEM = jsonschema_rs.Draft202012Validator(
    {**SPEC["components"]["schemas"]["Problem"], "components": SPEC["components"]}
)
_TEMPLATE = re.compile(r"{(\w+)}")


@dataclass
class World:
    """Ids that exist on the platform, by the name they have in paths, queries and bodies."""

    ids: dict[str, str]
    other: dict[str, str] = field(default_factory=dict)
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def text(self, name: str, schema: dict[str, Any]) -> str:
        """A string for a property: an existing id or name where one is meant, else a unique
        value that satisfies the usual patterns."""
        known = {
            "email": f"matrix-{self.suffix}@example.org",
            "currency": "EUR",
            "password": "matrix-password-123",
            "new_password": "matrix-password-123",
            "code": f"MATRIX-{self.suffix}",
            "system_type": "linux",
            "libvirt_uri": "test:///default",
            "url": "https://hooks.example.org/compgrid",
            "source": "/var/lib/compgrid/images/matrix.qcow2",
            "instance_type": "small",
            "image": "ubuntu-24.04",
        }
        if name in self.ids:
            return self.ids[name]
        if name in known:
            return known[name]
        if schema.get("format") == "uuid":
            return str(uuid.uuid4())
        if schema.get("format") in ("date", "date-time"):
            return self.moment(name, schema["format"])
        return f"matrix-{self.suffix}"

    def moment(self, name: str, kind: str) -> str:
        """A time that keeps ranges valid: starts a day back, ends an hour ahead, leases and
        expiries a day ahead, grants running from this year to the next."""
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        if kind == "date":
            year = hour.year + (name == "valid_to")
            return f"{year}-12-31" if name == "valid_to" else f"{year}-01-01"
        offsets = {"until": 1, "period_end": 1, "lease_ends_at": 24, "expires_at": 24}
        return (hour + timedelta(hours=offsets.get(name, -24))).isoformat()

    def sample(self, schema: dict[str, Any], name: str = "") -> Any:
        """The smallest value the schema accepts: required properties only, defaults kept."""
        if "$ref" in schema:
            return self.sample(SPEC["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]])
        if "default" in schema:
            return schema["default"]
        if "enum" in schema:
            return schema["enum"][0]
        if "anyOf" in schema:
            first = next(s for s in schema["anyOf"] if s.get("type") != "null")
            return self.sample(first, name)
        kind = schema.get("type")
        if kind == "object":
            props = schema.get("properties", {})
            return {k: self.sample(props[k], k) for k in schema.get("required", [])}
        if kind == "array":
            return [self.sample(schema["items"], name)] * schema.get("minItems", 0)
        if kind in ("integer", "number"):
            return max(1, int(schema.get("minimum", 1)))
        if kind == "boolean":
            return False
        return self.text(name, schema)


def request_for(world: World, method: str, path: str) -> dict[str, Any]:
    """httpx keyword arguments of a valid call: existing ids in the path, required query
    parameters set, and a minimal body validated against the document."""
    operation = SPEC["paths"][API + path][method.lower()]
    url = _TEMPLATE.sub(lambda m: world.ids[m.group(1)], path)
    params = {
        p["name"]: world.sample(p["schema"], p["name"])
        for p in operation.get("parameters", [])
        if p["in"] == "query" and p.get("required")
    }
    headers = {"If-Match": '"1"'} if method == "PATCH" else {}
    request: dict[str, Any] = {"method": method, "url": url, "params": params, "headers": headers}
    if body := operation.get("requestBody"):
        schema = body["content"]["application/json"]["schema"]
        sample = world.sample(schema)
        validator = jsonschema_rs.Draft202012Validator({**schema, "components": SPEC["components"]})
        assert validator.is_valid(sample), f"no valid sample body for {method} {path}: {sample}"
        request["json"] = sample
    return request


async def send(client: httpx.AsyncClient, **request: Any) -> httpx.Response:
    """Send a request, waiting out the rate limit if the run hits it; an event stream is
    closed as soon as it opens (its status is all a refusal test needs)."""
    for _ in range(10):
        response = await client.send(client.build_request(**request), stream=True)
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            await response.aclose()
            return response
        await response.aread()
        if response.status_code != 429:
            return response
        await asyncio.sleep(float(response.headers.get("retry-after", "1")))
    return response


def signed(request: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    """The request with more headers (the caller's token)."""
    return request | {"headers": request["headers"] | headers}


def stranger() -> dict[str, str]:
    """A client address of one request alone (the benchmarking range, random host part): a
    missing or bad token counts against its address's rate limit, and hundreds of refusals
    from the runner's own address would throttle every other test without a token."""
    n = uuid.uuid4().int
    return {"X-Forwarded-For": f"198.18.{n % 250}.{(n >> 8) % 250}"}


def assert_problem(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    """The answer is a problem document with one of the statuses."""
    where = f"{response.request.method} {response.request.url.path}"
    assert response.status_code in statuses, f"{where}: {response.status_code} {response.text}"
    assert response.headers["content-type"].startswith("application/problem+json"), where
    body: dict[str, Any] = response.json()
    assert set(body) == PROBLEM_FIELDS, where
    assert PROBLEM.is_valid(body), where
    assert body["status"] == response.status_code, where
    return body


def bearer(token: str) -> dict[str, str]:
    """An Authorization header."""
    return {"Authorization": f"Bearer {token}"}


async def _create(client: httpx.AsyncClient, token: str, path: str, body: Any) -> dict[str, Any]:
    """Create a resource; a 404 is retried for a while, as the inventory learns of new projects
    and grants from events."""
    for _ in range(120):
        response = await send(client, method="POST", url=path, json=body, headers=bearer(token))
        if response.status_code != 404:
            break
        await asyncio.sleep(0.25)
    assert response.status_code in (201, 202), response.text
    created: dict[str, Any] = response.json()
    return created


async def _first(client: httpx.AsyncClient, token: str, path: str, key: str = "") -> Any:
    response = await send(client, method="GET", url=path, headers=bearer(token))
    assert response.status_code == 200, response.text
    found = response.json()
    return (found[key] if key else found)[0]


async def _tenant(client: httpx.AsyncClient, admin: str, world: World) -> dict[str, str]:
    """A second project with its own PI, grant and instance."""
    sfx = uuid.uuid4().hex[:8]
    user = {"email": f"other-pi-{sfx}@example.org", "display_name": "Olga Other", "roles": ["pi"]}
    pi = await _create(client, admin, "/users", {**user, "password": "other-pi-password-1"})
    project = await _create(
        client, admin, "/projects", {"name": f"Other {sfx}", "pi_user_id": pi["id"]}
    )
    grant = {
        "project_id": project["id"],
        "code": f"OTHER-{sfx}",
        "name": "Other grant",
        "funding_amount": "500",
        "currency": "EUR",
        "valid_from": world.moment("valid_from", "date"),
        "valid_to": world.moment("valid_to", "date"),
    }
    code = await _create(client, admin, "/budget-codes", grant)
    wanted = {"name": f"other-{sfx}", "project_id": project["id"], "budget_code_id": code["id"]}
    wanted |= {"instance_type": "small", "image": "ubuntu-24.04"}
    instance = await _create(client, admin, "/instances", wanted)
    return {
        "pi": pi["id"],
        "project": project["id"],
        "code": code["id"],
        "instance": instance["id"],
    }


@pytest.fixture(scope="module")
async def world(stack: Stack) -> AsyncIterator[World]:
    """Ids of the demo catalogue and project, plus a throwaway account, API token, webhook and
    instance, and another tenant; the instances, token, webhook and accounts are removed or
    disabled after the module."""
    admin = stack.token("admin")
    async with httpx.AsyncClient(base_url=stack.api, timeout=30) as client:
        codes = await send(client, method="GET", url="/budget-codes", headers=bearer(admin))
        code = next(c for c in codes.json() if c["code"] == "DEMO-GRANT-1")
        sfx = uuid.uuid4().hex[:8]
        user = {"email": f"spare-{sfx}@example.org", "display_name": "Spare"}
        user["password"] = "spare-password-123"
        ids = {
            "project_id": code["project_id"],
            "budget_code_id": code["id"],
            "host_id": (await _first(client, admin, "/hosts", "items"))["id"],
            "datacenter": "demo-dc",
            "price_tier_id": (await _first(client, admin, "/price-tiers"))["id"],
            "instance_type_id": (await _first(client, admin, "/instance-types"))["id"],
            "user_id": (await _create(client, admin, "/users", user))["id"],
            "token_id": (await _create(client, admin, "/me/api-tokens", {"name": sfx}))["id"],
            "invoice_id": str(uuid.uuid4()),  # a fresh platform has issued none
        }
        hook = {"url": "https://hooks.example.org/compgrid", "project_id": code["project_id"]}
        ids["webhook_id"] = (await _create(client, admin, "/webhooks", hook))["id"]
        mine = {"name": f"mine-{sfx}", "project_id": code["project_id"]}
        mine |= {"budget_code_id": code["id"], "instance_type": "small", "image": "ubuntu-24.04"}
        researcher = stack.token("researcher")
        ids["instance_id"] = (await _create(client, researcher, "/instances", mine))["id"]
        world = World(ids)
        world.other = await _tenant(client, admin, world)
        yield world
        leftovers = [
            ("DELETE", f"/instances/{ids['instance_id']}"),
            ("DELETE", f"/instances/{world.other['instance']}"),
            ("DELETE", f"/webhooks/{ids['webhook_id']}"),
            ("DELETE", f"/me/api-tokens/{ids['token_id']}"),
            ("POST", f"/users/{ids['user_id']}/disable"),
            ("POST", f"/users/{world.other['pi']}/disable"),
        ]
        for method, url in leftovers:
            await send(client, method=method, url=url, headers=bearer(admin))


async def _signers(stack: Stack) -> tuple[TokenSigner, TokenSigner]:
    """Signers holding the platform's own keys (read from the auth schema with its secret, in a
    transaction that is rolled back): one whose tokens expired two minutes ago, one live."""
    secret = AuthSettings().secret_key.get_secret_value()
    expired = TokenSigner(secret, timedelta(minutes=-2))
    live = TokenSigner(secret, timedelta(minutes=5))
    engine = create_async_engine(
        stack.database_url.replace("postgresql://", "postgresql+asyncpg://")
    )
    try:
        async with AsyncSession(engine) as session:
            await expired.load(session)
            await live.load(session)
            await session.rollback()
    finally:
        await engine.dispose()
    return expired, live


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(claims: dict[str, Any]) -> str:
    """A token with ``alg: none`` and no signature."""
    header = json.dumps({"alg": "none", "typ": "JWT", "kid": "none"}).encode()
    return f"{_b64(header)}.{_b64(json.dumps(claims).encode())}."


def _tampered(token: str) -> str:
    """The same token claiming the admin role, its signature left as it was."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["roles"] = ["admin"]
    return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"


@pytest.fixture(scope="module")
async def bad_tokens(stack: Stack) -> dict[str, str]:
    """Tokens every operation must refuse, each about the admin (or claiming to be one)."""
    expired, _ = await _signers(stack)
    admin = jwt.decode(stack.token("admin"), options={"verify_signature": False})
    subject = uuid.UUID(admin["sub"])
    kid = jwt.get_unverified_header(stack.token("admin"))["kid"]
    claims = {**admin, "jti": uuid.uuid4().hex}
    return {
        "expired": expired.sign_access(subject, admin["roles"], admin["projects"])[0],
        "tampered": _tampered(stack.token("researcher")),
        "foreign-key": jwt.encode(
            claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": kid}
        ),
        "unsigned": _unsigned(claims),
        "malformed": "not.a.token",
    }


def _op_id(op: tuple[str, str]) -> str:
    return f"{op[0]} {op[1]}"


async def test_the_matrix_covers_every_operation_the_gateway_serves(
    client: httpx.AsyncClient,
) -> None:
    """The matrix is generated from the committed document; the gateway serves the same."""
    live = (await client.get("/openapi.json")).json()
    served = sorted(
        (m.upper(), p.removeprefix(API))
        for p, ops in live["paths"].items()
        if p.startswith(API + "/")
        for m in ops
    )
    assert served == OPERATIONS
    assert set(OWNER_ONLY) <= set(OPERATIONS)
    assert {path for _, path in OPERATIONS} >= PUBLIC


@pytest.mark.parametrize("path", sorted(PUBLIC))
def test_the_document_marks_public_operations_as_needing_no_token(path: str) -> None:
    assert SPEC["paths"][API + path]["post"].get("security") == []


@pytest.mark.parametrize("op", GUARDED, ids=_op_id)
async def test_refuses_every_operation_without_a_token(
    client: httpx.AsyncClient, world: World, op: tuple[str, str]
) -> None:
    response = await send(client, **signed(request_for(world, *op), stranger()))
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].lower().startswith("bearer")


@pytest.mark.parametrize("op", GUARDED, ids=_op_id)
@pytest.mark.parametrize("kind", ["expired", "tampered", "foreign-key", "unsigned", "malformed"])
async def test_refuses_every_operation_with_a_bad_token(
    client: httpx.AsyncClient,
    world: World,
    bad_tokens: dict[str, str],
    kind: str,
    op: tuple[str, str],
) -> None:
    request = signed(request_for(world, *op), bearer(bad_tokens[kind]) | stranger())
    response = await send(client, **request)
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].lower().startswith("bearer")


async def test_the_expired_token_differs_from_a_live_one_only_in_its_expiry(
    stack: Stack, client: httpx.AsyncClient, bad_tokens: dict[str, str]
) -> None:
    """The control for the expired token: same key, same subject, a lifetime left: accepted."""
    _, live = await _signers(stack)
    expired = jwt.decode(bad_tokens["expired"], options={"verify_signature": False})
    assert expired["exp"] < expired["iat"]
    token, _ = live.sign_access(uuid.UUID(expired["sub"]), expired["roles"], expired["projects"])
    assert (
        jwt.get_unverified_header(token)["kid"]
        == jwt.get_unverified_header(bad_tokens["expired"])["kid"]
    )
    response = await client.get("/me", headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.json()["id"] == expired["sub"]


@pytest.mark.parametrize("path", sorted(PUBLIC))
async def test_public_operations_answer_without_a_token(
    client: httpx.AsyncClient, world: World, path: str
) -> None:
    """Without a token the answer is about the body's credentials, never a demand for a token
    (made-up credentials come from a documentation address, so no real address is throttled)."""
    request = request_for(world, "POST", path)
    request["headers"]["X-Forwarded-For"] = "198.51.100.23"
    response = await send(client, **request)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert assert_problem(response, response.status_code)["code"] != "unauthorized"


async def test_a_session_lives_on_public_operations_alone(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    email, password = "researcher@compgrid.example", "demo-researcher-password"
    pair = (await client.post("/auth/login", json={"email": email, "password": password})).json()
    renewed = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert renewed.status_code == 200, renewed.text
    refresh = renewed.json()["refresh_token"]
    assert (await client.post("/auth/logout", json={"refresh_token": refresh})).status_code == 204
    again = await client.post("/auth/refresh", json={"refresh_token": refresh})
    assert_problem(again, 401)
    made = await client.post(
        "/me/api-tokens", json={"name": "matrix"}, headers=stack.headers("researcher")
    )
    exchanged = await client.post("/auth/token", json={"api_token": made.json()["token"]})
    assert exchanged.status_code == 200, exchanged.text
    assert (await client.get("/me", headers=bearer(exchanged.json()["access_token"]))).is_success
    await client.delete(f"/me/api-tokens/{made.json()['id']}", headers=stack.headers("researcher"))


@pytest.mark.parametrize("op", OWNER_ONLY, ids=_op_id)
@pytest.mark.parametrize("who", ["researcher", "pi"])
async def test_refuses_owner_operations_to_people_without_the_role(
    stack: Stack, client: httpx.AsyncClient, world: World, who: str, op: tuple[str, str]
) -> None:
    response = await send(client, **signed(request_for(world, *op), stack.headers(who)))
    assert_problem(response, 403, 404)


# another tenant: a project the demo researcher is no member of

BY_FOREIGN_ID = [
    op
    for op in GUARDED
    if any(f"{{{name}}}" in op[1] for name in ("project_id", "budget_code_id", "instance_id"))
]
NAMING_A_PROJECT = [
    ("POST", "/instances"),
    ("POST", "/instances/by-requirements"),
    ("POST", "/budget-codes"),
    ("POST", "/webhooks"),
]
FILTERED_BY_PROJECT = ["/budget-codes", "/budgets", "/instances", "/webhooks", "/invoices"]
LISTS = ["/me", "/projects", "/instances", "/budget-codes", "/budgets", "/invoices", "/webhooks"]


async def _aiming_at(stack: Stack, client: httpx.AsyncClient, world: World, who: str) -> World:
    """The world seen from a demo person aiming at the other tenant's ids (and at adding
    themselves to that project)."""
    me = (await client.get("/me", headers=stack.headers(who))).json()
    other = world.other
    ids = world.ids | {
        "project_id": other["project"],
        "budget_code_id": other["code"],
        "instance_id": other["instance"],
        "user_id": me["id"],
    }
    return World(ids, other)


def _nowhere(world: World) -> World:
    """The same world with ids that do not exist."""
    fresh = {k: str(uuid.uuid4()) for k in ("project_id", "budget_code_id", "instance_id")}
    return World(world.ids | fresh, world.other)


async def _refusal(
    stack: Stack, client: httpx.AsyncClient, world: World, who: str, op: tuple[str, str]
) -> dict[str, Any]:
    request = request_for(world, *op)
    if op == ("POST", "/webhooks"):
        request["json"]["project_id"] = world.ids["project_id"]
    response = await send(client, **signed(request, stack.headers(who)))
    return assert_problem(response, 403, 404)


@pytest.mark.parametrize("op", BY_FOREIGN_ID + NAMING_A_PROJECT, ids=_op_id)
@pytest.mark.parametrize("who", ["researcher", "pi"])
async def test_hides_another_projects_resources(
    stack: Stack, client: httpx.AsyncClient, world: World, who: str, op: tuple[str, str]
) -> None:
    """Refused, and refused exactly as if the ids did not exist, so nothing tells that the
    other project, grant or instance is there."""
    foreign = await _aiming_at(stack, client, world, who)
    refused = await _refusal(stack, client, foreign, who, op)
    unknown = await _refusal(stack, client, _nowhere(foreign), who, op)
    assert (refused["status"], refused["code"]) == (unknown["status"], unknown["code"])


@pytest.mark.parametrize("of", ["instance", "project", "budget_code"])
@pytest.mark.parametrize("path", ["/usage", "/costs"])
async def test_hides_another_projects_usage_and_costs(
    stack: Stack, client: httpx.AsyncClient, world: World, path: str, of: str
) -> None:
    target = world.other[{"budget_code": "code"}.get(of, of)]
    params = {"of": of, "id": target}
    params |= {name: world.moment(name, "date-time") for name in ("since", "until")}
    response = await client.get(path, params=params, headers=stack.headers("researcher"))
    assert_problem(response, 403, 404)


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/invoices", {"project_id": "project"}),
        ("/invoices", {"budget_code_id": "code"}),
        ("/budgets/{code}", {}),
        ("/events/instances", {"instance_id": "instance"}),
    ],
)
async def test_hides_another_projects_money_and_events(
    stack: Stack, client: httpx.AsyncClient, world: World, path: str, params: dict[str, str]
) -> None:
    url = path.format(**world.other)
    query = {key: world.other[value] for key, value in params.items()}
    request = {"method": "GET", "url": url, "params": query, "headers": {}}
    response = await send(client, **signed(request, stack.headers("researcher")))
    assert_problem(response, 403, 404)


@pytest.mark.parametrize("path", FILTERED_BY_PROJECT)
async def test_lists_filtered_by_another_project_show_nothing_of_it(
    stack: Stack, client: httpx.AsyncClient, world: World, path: str
) -> None:
    response = await client.get(
        path, params={"project_id": world.other["project"]}, headers=stack.headers("researcher")
    )
    if response.status_code >= 400:
        assert_problem(response, 403, 404)
        return
    assert response.status_code == 200, response.text
    for name, value in world.other.items():
        assert value not in response.text, f"{path} shows the other tenant's {name}"


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize("who", ["researcher", "pi"])
async def test_lists_leave_out_another_projects_ids(
    stack: Stack, client: httpx.AsyncClient, world: World, who: str, path: str
) -> None:
    """Every list the demo people may read, unfiltered or (where only admins and finance may
    list everything) filtered by their own project; a list they may not read is refused."""
    response = await client.get(path, headers=stack.headers(who))
    if response.status_code == 403:
        own = {"project_id": world.ids["project_id"]}
        response = await client.get(path, params=own, headers=stack.headers(who))
    if response.status_code == 403:
        assert_problem(response, 403)
        return
    assert response.status_code == 200, response.text
    for name, value in world.other.items():
        assert value not in response.text, f"{path} shows the other tenant's {name}"
    if path in ("/projects", "/instances", "/budget-codes", "/budgets"):
        assert world.ids["project_id"] in response.text  # the check is not vacuous
