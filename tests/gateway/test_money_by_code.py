"""Budget codes by their code wherever money and usage are asked about (issue 15, item 7): a
budget's money and forecast, its costs, its usage and its invoices answer the same whether the
grant is named by id or by code (``DEMO-GRANT-1``); an unknown code and the code of a project
the caller is not in are not found; instances and projects are still named by id only."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import Stack
from tests.gateway.flows import demo_grant, events, request_body

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis, pytest.mark.slow]

OPERATIONS = ("budget", "costs", "usage", "invoices")
READER = {"budget": "researcher", "costs": "pi", "usage": "researcher", "invoices": "pi"}
"""Who in the demo project reads each (members see budgets and usage; PIs money)."""


def _window() -> dict[str, str]:
    """Whole hours from yesterday to the next hour, the same for every call of a test."""
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return {
        "since": (hour - timedelta(days=1)).isoformat(),
        "until": (hour + timedelta(hours=1)).isoformat(),
    }


def _request(operation: str, key: str, window: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The path and query of one operation naming a budget code by ``key`` (id or code)."""
    if operation == "budget":
        return f"/budgets/{key}", {}
    if operation == "invoices":
        return "/invoices", {"budget_code_id": key}
    return f"/{operation}", {"of": "budget_code", "id": key, **window}


async def _ask(
    http: httpx.AsyncClient, stack: Stack, who: str, operation: str, key: str
) -> httpx.Response:
    path, params = _request(operation, key, _window())
    return await http.get(path, params=params, headers=stack.headers(who))


async def _same_by_id_and_code(
    http: httpx.AsyncClient, stack: Stack, operation: str, grant: dict[str, Any]
) -> dict[str, Any]:
    """The answer by code, checked equal to the answer by id: asked by id before and after,
    until those two agree (other tests may be spending on the grant meanwhile)."""
    who = READER[operation]

    async def settled() -> tuple[httpx.Response, httpx.Response]:
        while True:
            before = await _ask(http, stack, who, operation, grant["id"])
            by_code = await _ask(http, stack, who, operation, grant["code"])
            after = await _ask(http, stack, who, operation, grant["id"])
            for reply in (before, by_code, after):
                assert reply.status_code == 200, reply.text
            if before.json() == after.json():
                return before, by_code
            await asyncio.sleep(0.2)

    by_id, by_code = await asyncio.wait_for(settled(), 60)
    assert by_code.json() == by_id.json()
    answer: dict[str, Any] = by_code.json()
    return answer


@pytest.fixture(scope="module")
async def foreign_grant(stack: Stack) -> AsyncIterator[dict[str, Any]]:
    """A grant of a project neither the demo PI nor the researcher is in, known to billing."""
    admin = stack.headers("admin")
    async with httpx.AsyncClient(base_url=stack.api, timeout=30) as http:
        sfx = uuid.uuid4().hex[:8]
        project = await http.post("/projects", json={"name": f"Elsewhere {sfx}"}, headers=admin)
        assert project.status_code == 201, project.text
        today = date.today()
        body = {
            "project_id": project.json()["id"],
            "code": f"ELSEWHERE-{sfx}",
            "name": "another project's grant",
            "funding_amount": "500",
            "currency": "EUR",
            "valid_from": str(today - timedelta(days=1)),
            "valid_to": str(today + timedelta(days=90)),
        }
        code = await http.post("/budget-codes", json=body, headers=admin)
        assert code.status_code == 201, code.text
        grant: dict[str, Any] = code.json()

        async def known_to_billing() -> None:
            while (await http.get(f"/budgets/{grant['id']}", headers=admin)).status_code != 200:
                await asyncio.sleep(0.2)

        await asyncio.wait_for(known_to_billing(), 60)
        yield grant


@pytest.mark.parametrize("operation", ["budget", "costs", "invoices"])
async def test_a_grant_named_by_its_code_answers_as_by_its_id(
    client: httpx.AsyncClient, stack: Stack, operation: str
) -> None:
    grant = await demo_grant(client, stack)
    answer = await _same_by_id_and_code(client, stack, operation, grant)
    if operation == "budget":
        assert (answer["budget_code_id"], answer["code"]) == (grant["id"], "DEMO-GRANT-1")
    elif operation == "costs":
        assert (answer["id"], answer["project_id"]) == (grant["id"], grant["project_id"])
    else:
        assert all(i["budget_code_id"] == grant["id"] for i in answer["invoices"])


async def test_a_grants_usage_by_its_code_is_its_usage_by_id(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    grant = await demo_grant(client, stack)
    researcher = stack.headers("researcher")
    made = await client.post("/instances", json=request_body(grant), headers=researcher)
    assert made.status_code == 202, made.text
    instance_id = made.json()["id"]

    async def until(state: str) -> None:
        async for name, data in events(client, researcher, instance_id=instance_id):
            if name in ("instance", "state") and data["state"] == state:
                return
        raise AssertionError("the stream ended")

    async def used() -> None:
        while True:  # until metering has usage of the grant (none yet: not found)
            reply = await _ask(client, stack, "researcher", "usage", grant["id"])
            if reply.status_code == 200 and reply.json()["hours"]:
                return
            await asyncio.sleep(0.5)

    try:
        await asyncio.wait_for(until("running"), 60)
        await asyncio.wait_for(used(), 60)
        stopped = await client.post(f"/instances/{instance_id}/stop", headers=researcher)
        assert stopped.status_code == 202, stopped.text
        await asyncio.wait_for(until("stopped"), 60)
        answer = await _same_by_id_and_code(client, stack, "usage", grant)
        assert (answer["id"], answer["project_id"]) == (grant["id"], grant["project_id"])
        assert float(answer["total"]["running_seconds"]) > 0
    finally:
        await client.delete(f"/instances/{instance_id}", headers=researcher)


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_an_unknown_code_and_another_projects_code_are_not_found(
    client: httpx.AsyncClient, stack: Stack, foreign_grant: dict[str, Any], operation: str
) -> None:
    for who in ("researcher", "pi"):
        unknown = await _ask(client, stack, who, operation, f"NO-SUCH-{uuid.uuid4().hex[:8]}")
        assert unknown.status_code == 404, (who, unknown.text)
        foreign = await _ask(client, stack, who, operation, foreign_grant["code"])
        assert foreign.status_code == 404, (who, foreign.text)
        assert foreign.json()["code"] == unknown.json()["code"]
    # the code is real: someone who may see the grant reads it by its code
    owner = await _ask(client, stack, "admin", operation, foreign_grant["code"])
    assert owner.status_code == 200, owner.text


@pytest.mark.parametrize("operation", ["costs", "usage"])
@pytest.mark.parametrize("of", ["instance", "project"])
async def test_instances_and_projects_are_named_by_id_only(
    client: httpx.AsyncClient, stack: Stack, operation: str, of: str
) -> None:
    params = {"of": of, "id": "DEMO-GRANT-1", **_window()}
    refused = await client.get(f"/{operation}", params=params, headers=stack.headers("pi"))
    assert refused.status_code == 422, refused.text
    assert refused.json()["field"] == "id"
