"""Instances and prices as people meet them through the API: rate changes only on whole hours,
a budget code usable the moment it is created and by its code, refusals at admission answered
as problems (the rejected instance still readable), and the budget hold shown on the instance.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import Stack
from tests.gateway.flows import demo_grant, request_body

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis, pytest.mark.slow]


async def _delete(http: httpx.AsyncClient, stack: Stack, instance_id: str, who: str) -> None:
    """Give the demo project's quota and hosts back."""
    reply = await http.delete(f"/instances/{instance_id}", headers=stack.headers(who))
    assert reply.status_code in (202, 409), reply.text


async def _new_code(
    http: httpx.AsyncClient, stack: Stack, project_id: str, **extra: Any
) -> dict[str, Any]:
    """A new grant of the demo project, created by its PI."""
    today = date.today()
    body = {
        "project_id": project_id,
        "code": f"G-{uuid.uuid4().hex[:10]}",
        "name": "fresh grant",
        "funding_amount": "500",
        "currency": "EUR",
        "valid_from": str(today - timedelta(days=1)),
        "valid_to": str(today + timedelta(days=90)),
        **extra,
    }
    reply = await http.post("/budget-codes", json=body, headers=stack.headers("pi"))
    assert reply.status_code == 201, reply.text
    created: dict[str, Any] = reply.json()
    return created


# Item 2: rates change on whole hours -----------------------------------------------------------


async def test_refuses_a_rate_change_inside_an_hour_and_keeps_the_tier_as_it_was(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    admin = stack.headers("admin")
    tier = (await client.get("/price-tiers", headers=admin)).json()[0]
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=2)
    rates = {"vcpu_hour": "0.5", "memory_gib_hour": "0.05", "storage_gib_month": "0.1"}
    rates["gpu_hour"] = tier["current"]["rates"]["gpu_hour"]

    for when in (hour + timedelta(minutes=30), hour + timedelta(seconds=1)):
        body = {"effective_from": when.isoformat(), "rates": rates}
        refused = await client.post(f"/price-tiers/{tier['id']}/rates", json=body, headers=admin)
        assert refused.status_code == 422, refused.text
        problem = refused.json()
        assert (problem["code"], problem["field"]) == ("not_whole_hour", "effective_from")
        assert "whole UTC hour" in problem["detail"]
        fresh = {"name": f"t-{uuid.uuid4().hex[:8]}", "currency": "EUR", **body}
        assert (await client.post("/price-tiers", json=fresh, headers=admin)).status_code == 422

    assert (await client.get(f"/price-tiers/{tier['id']}", headers=admin)).json() == tier


# Item 6: a budget code is usable the moment it is created ---------------------------------------


async def test_a_budget_code_is_usable_right_after_it_is_created(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    """20 grants, each used by a request the moment it exists, ten at a time: none is refused
    as unknown because the inventory's projection has not caught up yet."""
    grant = await demo_grant(client, stack)

    async def create_and_use(n: int) -> httpx.Response:
        code = await _new_code(client, stack, grant["project_id"])
        body = request_body(grant, name=f"fresh-{n}-{uuid.uuid4().hex[:6]}")
        body["budget_code_id"] = code["id"] if n % 2 else code["code"]
        reply = await client.post("/instances", json=body, headers=stack.headers("researcher"))
        if reply.status_code == 202:
            assert reply.json()["budget_code_id"] == code["id"]
            await _delete(client, stack, reply.json()["id"], "researcher")
        return reply

    replies: list[httpx.Response] = []
    for first in (0, 10):
        replies += await asyncio.gather(*(create_and_use(n) for n in range(first, first + 10)))
    # The platform is shared with other tests, so the demo hosts or the project's quota may be
    # full at that moment: such a refusal is a 409 about capacity or quota, never the budget
    # code. Requests by id and by code both went through.
    refused = [r for r in replies if r.status_code != 202]
    assert all(
        r.status_code == 409 and r.json()["code"] in {"no_capacity", "quota_exceeded"}
        for r in refused
    ), [r.text for r in refused]
    accepted = [n for n, r in enumerate(replies) if r.status_code == 202]
    assert {n % 2 for n in accepted} == {0, 1}, [r.text for r in refused]


# Item 7: a budget code by its code ---------------------------------------------------------------


async def test_requests_name_the_budget_code_by_code_or_id(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    grant = await demo_grant(client, stack)
    researcher = stack.headers("researcher")
    by_code = await client.post(
        "/instances",
        json={**request_body(grant), "budget_code_id": "DEMO-GRANT-1"},
        headers=researcher,
    )
    assert by_code.status_code == 202, by_code.text
    assert by_code.json()["budget_code_id"] == grant["id"]
    await _delete(client, stack, by_code.json()["id"], "researcher")

    wanted = {
        "name": f"req-{uuid.uuid4().hex[:6]}",
        "project_id": grant["project_id"],
        "budget_code_id": "DEMO-GRANT-1",
        "requirements": {"min_vcpus": 1, "min_memory_gib": 1, "system_type": "linux"},
    }
    cheapest = await client.post("/instances/by-requirements", json=wanted, headers=researcher)
    assert cheapest.status_code == 202, cheapest.text
    assert cheapest.json()["budget_code_id"] == grant["id"]
    await _delete(client, stack, cheapest.json()["id"], "researcher")

    unknown = await client.post(
        "/instances",
        json={**request_body(grant), "budget_code_id": "NO-SUCH-GRANT"},
        headers=researcher,
    )
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["field"] == "budget_code_id"


async def test_a_grant_is_read_and_changed_by_its_code(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    grant = await demo_grant(client, stack)
    code = await _new_code(client, stack, grant["project_id"])
    pi = stack.headers("pi")
    by_code = await client.get(f"/budget-codes/{code['code']}", headers=pi)
    assert by_code.status_code == 200, by_code.text
    assert by_code.json() == code
    changed = await client.patch(
        f"/budget-codes/{code['code']}",
        json={"name": "renamed grant"},
        headers={**pi, "If-Match": by_code.headers["etag"]},
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["id"], changed.json()["name"]) == (code["id"], "renamed grant")
    missing = await client.get("/budget-codes/NO-SUCH-GRANT", headers=pi)
    assert missing.status_code == 404


# Item 16: a refusal decided at request time is a problem ---------------------------------------


async def test_a_request_refused_for_its_budget_is_a_402_problem_with_the_rejected_instance(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    grant = await demo_grant(client, stack)
    tomorrow = date.today() + timedelta(days=1)
    later = await _new_code(
        client, stack, grant["project_id"], valid_from=str(tomorrow), valid_to=str(tomorrow)
    )
    body = {**request_body(grant), "budget_code_id": later["code"]}

    refused = await client.post("/instances", json=body, headers=stack.headers("researcher"))

    assert refused.status_code == 402, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    problem = refused.json()
    assert problem["code"] == "budget_not_yet_valid"
    assert str(tomorrow) in problem["detail"]
    assert refused.headers["location"] == problem["instance_url"]
    assert problem["instance_url"].endswith(f"/api/v1/instances/{problem['instance_id']}")
    kept = await client.get(
        f"/instances/{problem['instance_id']}", headers=stack.headers("researcher")
    )
    assert kept.status_code == 200
    assert (kept.json()["state"], kept.json()["reason_code"]) == (
        "rejected",
        "budget_not_yet_valid",
    )
    assert kept.json()["reason"] == problem["detail"]
    assert kept.json()["hold"] is None


async def test_a_request_over_the_quota_is_a_409_problem(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    grant = await demo_grant(client, stack)
    admin, pi = stack.headers("admin"), stack.headers("pi")
    quota_path = f"/projects/{grant['project_id']}/quota"
    before = (await client.get(f"/projects/{grant['project_id']}/policy", headers=pi)).json()
    assert (await client.put(quota_path, json={"max_gpus": 0}, headers=admin)).status_code == 200
    try:
        body = request_body(grant, instance_type="gpu.a100")
        refused = await client.post("/instances", json=body, headers=pi)
    finally:
        restored = await client.put(quota_path, json=before["quota"], headers=admin)
        assert restored.status_code == 200, restored.text
    assert refused.status_code == 409, refused.text
    problem = refused.json()
    assert (problem["code"], problem["field"]) == ("quota_exceeded", None)
    assert "quota" in problem["detail"]
    kept = await client.get(problem["instance_url"].partition("/api/v1")[2], headers=pi)
    assert kept.json()["state"] == "rejected"


# Item 17: the budget hold, for the lease ---------------------------------------------------------


async def test_the_answer_shows_the_budget_hold_over_the_lease_or_the_horizon(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    grant = await demo_grant(client, stack)
    researcher = stack.headers("researcher")
    ends = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)

    leased = await client.post(
        "/instances", json=request_body(grant, lease_ends_at=ends.isoformat()), headers=researcher
    )
    open_ended = await client.post("/instances", json=request_body(grant), headers=researcher)

    for reply in (leased, open_ended):
        assert reply.status_code == 202, reply.text
        await _delete(client, stack, reply.json()["id"], "researcher")
    hold = leased.json()["hold"]
    price = Decimal(leased.json()["hourly_price"]["amount"])
    assert datetime.fromisoformat(hold["until"]) == ends
    assert Decimal("1.99") <= Decimal(hold["hours"]) <= Decimal("2.00")
    assert hold["amount"]["currency"] == leased.json()["hourly_price"]["currency"]
    assert abs(Decimal(hold["amount"]["amount"]) - price * 2) <= price / 100
    default = open_ended.json()["hold"]
    assert Decimal(default["hours"]) == Decimal("24.00")
    assert Decimal(default["amount"]["amount"]) == price * 24
