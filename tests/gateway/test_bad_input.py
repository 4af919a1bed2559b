"""What the gateway does with input it must not pass on: bodies too large, not JSON, malformed,
with unknown fields or text no database column can hold; bad page sizes, ids, endpoints,
methods and headers. Each refusal is a problem document with a stable ``code`` and leaves
everything as it was; valid but unusual text (emoji, right-to-left, combining marks, characters
outside the BMP) is stored and returned exactly.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest

from tests.gateway.conftest import Stack

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis, pytest.mark.slow]

API = "/api/v1"
SPEC: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "openapi.json").read_text()
)
PROBLEM = jsonschema_rs.Draft202012Validator(
    {**SPEC["components"]["schemas"]["Problem"], "components": SPEC["components"]}
)
PROBLEM_FIELDS = {"type", "title", "status", "detail", "code", "field", "instance", "request_id"}
MIB = 1 << 20

Probe = Callable[[], Awaitable[Any]]


class Admin:
    """The admin's own client (its own rate-limit bucket) and what each target looks like."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send a request, waiting out the rate limit if the run hits it."""
        for _ in range(10):
            response = await self.client.request(method, url, **kwargs)
            if response.status_code != 429:
                return response
            await asyncio.sleep(float(response.headers.get("retry-after", "1")))
        return response

    async def get(self, url: str, **params: Any) -> Any:
        """A 200 answer's JSON."""
        response = await self.send("GET", url, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    async def newest_audit_entry(self) -> Any:
        """The newest audit entry: every change of accounts, projects and settings adds one."""
        return (await self.get("/audit", limit=1))["items"][0]["id"]

    async def datacenters(self) -> Any:
        """The datacenters as they are, without their workers (whose heartbeats move on)."""
        return [
            {k: v for k, v in dc.items() if k != "workers"} for dc in await self.get("/datacenters")
        ]

    async def demo_dc(self) -> dict[str, Any]:
        """The demo datacenter as it is."""
        found: dict[str, Any] = next(
            dc for dc in await self.datacenters() if dc["name"] == "demo-dc"
        )
        return found

    async def webhooks(self) -> Any:
        """Every webhook endpoint."""
        return await self.get("/webhooks")

    async def settings(self) -> Any:
        """The platform switches."""
        return await self.get("/settings")


@pytest.fixture(scope="module")
async def admin(stack: Stack) -> AsyncIterator[Admin]:
    """The admin, signed in for this module only."""
    headers = {"Authorization": f"Bearer {stack.login('admin')}"}
    async with httpx.AsyncClient(base_url=stack.api, headers=headers, timeout=60) as client:
        yield Admin(client)


# One valid body per body method and owning service, and the read that shows whether it acted.
TARGETS: dict[str, tuple[str, str, dict[str, Any], str]] = {
    "auth": ("POST", "/projects", {"name": "bad-input"}, "newest_audit_entry"),
    "settings": ("PUT", "/settings", {"self_registration": True}, "settings"),
    "inventory": ("PATCH", "/datacenters/demo-dc", {"description": "changed"}, "datacenters"),
    "billing": ("POST", "/webhooks", {"url": "https://hooks.example.org/x"}, "webhooks"),
}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The answer is a problem document with this status and code, valid against the
    document's Problem schema."""
    where = f"{response.request.method} {response.request.url}"
    assert response.status_code == status, f"{where}: {response.status_code} {response.text}"
    assert response.headers["content-type"] == "application/problem+json", where
    body: dict[str, Any] = response.json()
    assert set(body) == PROBLEM_FIELDS, where
    assert PROBLEM.is_valid(body), where
    assert (body["status"], body["code"]) == (status, code), where
    assert body["type"].endswith("/" + code), where
    return body


async def refused_without_effect(
    admin: Admin, target: str, status: int, code: str, **request: Any
) -> dict[str, Any]:
    """Send a corrupted request to a target; it is refused and the target is unchanged."""
    method, url, _, probe = TARGETS[target]
    before = await getattr(admin, probe)()
    response = await admin.send(method, url, **request)
    body = assert_problem(response, status, code)
    assert await getattr(admin, probe)() == before, f"{method} {url} acted on a refused request"
    return body


def as_json(target: str) -> bytes:
    """The target's valid body, encoded."""
    return json.dumps(TARGETS[target][2]).encode()


JSON = {"Content-Type": "application/json"}


async def test_the_targets_act_on_valid_bodies(admin: Admin) -> None:
    """The control: the bodies the other tests corrupt are accepted as they are, so each
    refusal below is the corruption's doing. The changes are undone after."""
    original = (await admin.demo_dc())["description"]
    for target, (method, url, body, probe) in TARGETS.items():
        before = await getattr(admin, probe)()
        response = await admin.send(method, url, json=body)
        assert response.is_success, f"{target}: {response.text}"
        assert await getattr(admin, probe)() != before, target
    hooks = (await admin.webhooks())["webhooks"]
    for hook in hooks:
        await admin.send("DELETE", f"/webhooks/{hook['id']}")
    await admin.send("PUT", "/settings", json={"self_registration": False})
    await admin.send("PATCH", "/datacenters/demo-dc", json={"description": original})


@pytest.mark.parametrize("target", TARGETS)
async def test_refuses_a_body_over_one_mib(admin: Admin, target: str) -> None:
    padding = {"description" if target == "inventory" else "name": "a" * MIB}
    body = json.dumps({**TARGETS[target][2], **padding}).encode()
    await refused_without_effect(admin, target, 413, "too_large", content=body, headers=JSON)


@pytest.mark.parametrize("target", TARGETS)
async def test_refuses_a_streamed_body_over_one_mib_without_a_length(
    admin: Admin, target: str
) -> None:
    """Chunked, so the size is only known while reading."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "'
        for _ in range(300):
            yield b"a" * 4096
        yield b'"}'

    await refused_without_effect(admin, target, 413, "too_large", content=chunks(), headers=JSON)


@pytest.mark.parametrize(
    "media",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        None,
    ],
)
@pytest.mark.parametrize("target", TARGETS)
async def test_refuses_a_body_that_is_not_json(admin: Admin, target: str, media: str) -> None:
    headers = {"Content-Type": media} if media else {}
    await refused_without_effect(
        admin, target, 415, "unsupported_media_type", content=as_json(target), headers=headers
    )


@pytest.mark.parametrize(
    "body",
    [b'{"name": ', b"{'name': 'x'}", b'{"name": "x",}', b"nope", b"\xff\xfe{}", b"{} {}"],
    ids=["cut", "single-quotes", "trailing-comma", "bare-word", "not-utf8", "two-documents"],
)
@pytest.mark.parametrize("target", TARGETS)
async def test_refuses_malformed_json(admin: Admin, target: str, body: bytes) -> None:
    await refused_without_effect(admin, target, 400, "malformed_json", content=body, headers=JSON)


@pytest.mark.parametrize("target", TARGETS)
async def test_refuses_an_unknown_field_and_names_it(admin: Admin, target: str) -> None:
    body = {**TARGETS[target][2], "colour": "blue"}
    problem = await refused_without_effect(admin, target, 422, "invalid", json=body)
    assert problem["field"] == "colour"


async def test_names_an_unknown_field_inside_an_object_by_its_path(admin: Admin) -> None:
    tiers = await admin.get("/price-tiers")
    rates = {"vcpu_hour": "0.01", "memory_gib_hour": "0.01", "colour": "blue"}
    body = {"name": f"tier-{uuid.uuid4().hex[:8]}", "currency": "EUR", "rates": rates}
    body["effective_from"] = "2026-01-01T00:00:00Z"
    response = await admin.send("POST", "/price-tiers", json=body)
    assert assert_problem(response, 422, "invalid")["field"] == "rates.colour"
    assert await admin.get("/price-tiers") == tiers


BAD_TEXT = {
    "escaped-nul": rb'"a\u0000b"',
    "raw-nul": b'"a\x00b"',
    "lone-high-surrogate": rb'"a\ud800b"',
    "lone-low-surrogate": rb'"a\udc00b"',
    "reversed-pair": rb'"a\ude00\ud83db"',
}


def with_text(body: dict[str, Any], text: bytes) -> bytes:
    """The body with raw JSON text in place of its first string (or in a field of its own)."""
    key = next((k for k, v in body.items() if isinstance(v, str)), "x")
    return json.dumps({**body, key: "\x01"}).encode().replace(rb'"\u0001"', text)


@pytest.mark.parametrize("text", BAD_TEXT.values(), ids=BAD_TEXT.keys())
@pytest.mark.parametrize("target", TARGETS)
async def test_refuses_nul_and_lone_surrogates_in_strings(
    admin: Admin, target: str, text: bytes
) -> None:
    raw = with_text(TARGETS[target][2], text)
    await refused_without_effect(admin, target, 400, "bad_text", content=raw, headers=JSON)


@pytest.mark.parametrize("text", BAD_TEXT.values(), ids=BAD_TEXT.keys())
@pytest.mark.parametrize("where", ["key", "nested"])
async def test_refuses_bad_text_in_keys_and_nested_values(
    admin: Admin, where: str, text: bytes
) -> None:
    if where == "key":
        raw = b"{" + text + b': "x", "name": "n"}'
    else:
        raw = b'{"name": "n", "x": [{"y": ' + text + b"}]}"
    await refused_without_effect(admin, "auth", 400, "bad_text", content=raw, headers=JSON)


@pytest.mark.parametrize(
    "url",
    ["/projects?after=%00", "/users?query=a%00b", "/instances?name=%00", "/projects/%00"],
)
async def test_refuses_a_nul_in_the_url(admin: Admin, url: str) -> None:
    assert_problem(await admin.send("GET", url), 400, "bad_request")


async def test_refuses_a_body_that_is_not_utf8_inside_a_string(admin: Admin) -> None:
    raw = b'{"name": "a\xed\xa0\x80b"}'  # a surrogate encoded as if it were a character
    await refused_without_effect(admin, "auth", 400, "malformed_json", content=raw, headers=JSON)


VALID_TEXT = {
    "cyrillic-emoji": "Лаборатория 🧪",
    "arabic-rtl": "مختبر الحوسبة",
    "hebrew-mixed": "מעבדה 42 lab",
    "combining-marks": "e\u0301cole n\u0303 Z\u0324\u0354\u0367a\u0308",
    "astral-plane": "\U0001d518\U0001d52b\U0001d526 \U0002070e \U0010fffd",
    "zwj-and-flags": "👩\u200d🔬👩🏽\u200d🔬 🇪🇺",
    "bidi-controls": "\u202eevil\u202c \u2067isolate\u2069",
    "invisible": "zero\u200bwidth\ufeffbom",
    "line-separators": "a\u0085b\u2028c\u2029d",
    "at-the-limit": "🧪" * 200,
}


@pytest.mark.parametrize("text", VALID_TEXT.values(), ids=VALID_TEXT.keys())
async def test_keeps_unusual_but_valid_text_exactly(admin: Admin, text: str) -> None:
    """Not normalised (NFC would merge the combining marks), not trimmed, not re-encoded; a
    200-character limit counts characters, not bytes or UTF-16 units."""
    created = await admin.send("POST", "/projects", json={"name": text})
    assert created.status_code == 201, created.text
    assert created.json()["name"] == text
    project = await admin.get(f"/projects/{created.json()['id']}")
    assert project["name"] == text
    found = await admin.get("/budget-codes", project_id=project["id"])
    assert found == []  # the project is new; now give it a grant named the same way
    grant = {"project_id": project["id"], "code": f"U-{uuid.uuid4().hex[:8]}", "name": text}
    grant |= {"funding_amount": "1", "currency": "EUR"}
    grant |= {"valid_from": "2026-01-01", "valid_to": "2099-12-31"}
    made = await admin.send("POST", "/budget-codes", json=grant)
    assert made.status_code == 201, made.text
    assert (await admin.get(f"/budget-codes/{made.json()['id']}"))["name"] == text


@pytest.mark.parametrize("text", VALID_TEXT.values(), ids=VALID_TEXT.keys())
async def test_keeps_unusual_text_in_the_inventory_exactly(admin: Admin, text: str) -> None:
    original = await admin.demo_dc()
    try:
        changed = await admin.send("PATCH", "/datacenters/demo-dc", json={"description": text})
        assert changed.status_code == 200, changed.text
        assert (await admin.demo_dc())["description"] == text
    finally:
        restore = {"description": original["description"]}
        await admin.send("PATCH", "/datacenters/demo-dc", json=restore)


PAGED = sorted(
    path.removeprefix(API)
    for path, operations in SPEC["paths"].items()
    for method, operation in operations.items()
    if method == "get" and any(p["name"] == "limit" for p in operation.get("parameters", []))
)


@pytest.mark.parametrize("limit", ["100000", "0", "-1", "abc", "1.5", "", "1e3"])
@pytest.mark.parametrize("path", PAGED)
async def test_refuses_page_sizes_out_of_range_and_names_limit(
    admin: Admin, path: str, limit: str
) -> None:
    response = await admin.send("GET", path, params={"limit": limit})
    assert assert_problem(response, 422, "invalid")["field"] == "limit"


BY_UUID = sorted(
    (method.upper(), path.removeprefix(API), param["name"])
    for path, operations in SPEC["paths"].items()
    for method, operation in operations.items()
    for param in operation.get("parameters", [])
    if param["in"] == "path" and param["schema"].get("format") == "uuid"
)


@pytest.mark.parametrize("bad", ["not-a-uuid", "1234", "00000000-0000-0000-0000-00000000000g"])
@pytest.mark.parametrize(("method", "path", "param"), BY_UUID, ids=lambda v: str(v))
async def test_refuses_an_id_that_is_not_a_uuid_and_names_it(
    admin: Admin, method: str, path: str, param: str, bad: str
) -> None:
    ids = {name: str(uuid.uuid4()) for name in ("project_id", "user_id")} | {param: bad}
    url = path.replace("{" + param + "}", bad).format(**ids)
    response = await admin.send(method, url)
    assert assert_problem(response, 422, "invalid")["field"] == param


@pytest.mark.parametrize(
    "url",
    ["/nope", "/instances/00000000-0000-4000-8000-000000000000/nope", "/me/nope", "/../v2/me"],
)
async def test_answers_an_unknown_endpoint_with_a_problem(admin: Admin, url: str) -> None:
    assert_problem(await admin.send("GET", url), 404, "not_found")


async def test_answers_an_unknown_endpoint_outside_the_api_with_a_problem(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.base_url) as client:
        assert_problem(await client.get("/api/v2/projects"), 404, "not_found")


# PATCH first: no path with a parameter where another has a name (``/instances/{id}`` and
# ``/instances/by-requirements``) takes it, so the wrong method is not read as a bad id.
METHODS = ["PATCH", "PUT", "DELETE", "POST", "GET"]
SERVED = {
    path.removeprefix(API): {m.upper() for m in operations}
    for path, operations in SPEC["paths"].items()
    if path.startswith(API)
}


def _wrong_method_case(path: str, allowed: set[str]) -> Any:
    missing = next(m for m in METHODS if m not in allowed)
    return pytest.param(path, missing, allowed, id=f"{missing} {path}")


@pytest.mark.parametrize(
    ("path", "method", "allowed"), [_wrong_method_case(p, a) for p, a in SERVED.items()]
)
async def test_answers_a_wrong_method_with_a_problem_and_the_allowed_methods(
    admin: Admin, path: str, method: str, allowed: set[str]
) -> None:
    ids = {"datacenter": "demo-dc"}
    url = path.format_map(ids | {k: str(uuid.uuid4()) for k in _names(path) if k not in ids})
    response = await admin.send(method, url)
    assert_problem(response, 405, "method_not_allowed")
    assert {m.strip() for m in response.headers["allow"].split(",")} >= allowed


def _names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


@pytest.mark.parametrize(
    "key",
    ["ключ".encode(), b"k" * 256, b"has space", b"", "é".encode("latin-1")],
    ids=["non-ascii", "too-long", "space", "empty", "latin-1"],
)
async def test_refuses_a_bad_idempotency_key(admin: Admin, key: bytes) -> None:
    headers = {"Idempotency-Key": key}
    problem = await refused_without_effect(
        admin, "auth", 400, "bad_request", json=TARGETS["auth"][2], headers=headers
    )
    assert problem["field"] == "Idempotency-Key"


@pytest.fixture
async def host(admin: Admin) -> dict[str, Any]:
    """A demo host as it is now, with its ETag."""
    listed = await admin.get("/hosts", limit=1)
    response = await admin.send("GET", f"/hosts/{listed['items'][0]['id']}")
    assert response.headers["etag"] == f'"{response.json()["version"]}"'
    found: dict[str, Any] = response.json()
    return found


@pytest.mark.parametrize(
    "if_match", ["garbage", '"abc"', '"0"', '"99999999999"', '"-1"', '""', "W/", '"999"']
)
async def test_refuses_a_host_change_whose_if_match_is_not_its_etag(
    admin: Admin, host: dict[str, Any], if_match: str
) -> None:
    change = {"labels": {**host["labels"], "bad-input": "yes"}}
    response = await admin.send(
        "PATCH", f"/hosts/{host['id']}", json=change, headers={"If-Match": if_match}
    )
    assert assert_problem(response, 412, "precondition_failed")["field"] == "If-Match"
    assert await admin.get(f"/hosts/{host['id']}") == host


@pytest.mark.parametrize("form", ["*", "list"])
async def test_accepts_if_match_any_and_a_list_holding_the_etag(
    admin: Admin, host: dict[str, Any], form: str
) -> None:
    if_match = "*" if form == "*" else f'"999", "{host["version"]}"'
    response = await admin.send(
        "PATCH",
        f"/hosts/{host['id']}",
        json={"labels": host["labels"]},
        headers={"If-Match": if_match},
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("if_match", [None, "garbage"])
async def test_a_grant_change_needs_if_match(admin: Admin, if_match: str | None) -> None:
    codes = await admin.get("/budget-codes")
    code = next(c for c in codes if c["code"] == "DEMO-GRANT-1")
    headers = {"If-Match": if_match} if if_match else {}
    response = await admin.send(
        "PATCH", f"/budget-codes/{code['id']}", json={"name": "changed"}, headers=headers
    )
    status, name = (
        (428, "precondition_required") if if_match is None else (412, "precondition_failed")
    )
    assert assert_problem(response, status, name)["field"] == "If-Match"
    assert await admin.get(f"/budget-codes/{code['id']}") == code
