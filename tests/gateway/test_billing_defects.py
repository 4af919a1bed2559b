"""Money through the API as its users meet it (issue 15): an instance's costs come from billing
and agree with ``/costs``; the runs list says nothing a request alone knows; PIs and members
list what they may see; endpoints never at link-local or metadata addresses; webhooks answer
``id`` and may subscribe to budget events."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import Stack
from tests.gateway.flows import demo_grant, events, request_body

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis, pytest.mark.slow]


async def _running(http: httpx.AsyncClient, stack: Stack, instance_id: str) -> None:
    async def watch() -> None:
        async for name, data in events(http, stack.headers("researcher"), instance_id=instance_id):
            if name in ("instance", "state") and data["state"] == "running":
                return
        raise AssertionError("the stream ended")

    await asyncio.wait_for(watch(), 60)


async def _stopped(http: httpx.AsyncClient, stack: Stack, instance_id: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        reply = await http.get(f"/instances/{instance_id}", headers=stack.headers("researcher"))
        assert reply.status_code == 200, reply.text
        if (state := reply.json()["state"]) == "stopped":
            return
        assert time.monotonic() < deadline, f"still {state} 60 s after the stop"
        await asyncio.sleep(0.2)


async def _after(seconds: float) -> None:
    """Return once at least ``seconds`` of wall time have passed."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        await asyncio.sleep(0.1)


async def _costs(http: httpx.AsyncClient, stack: Stack, instance_id: str) -> dict[str, Any]:
    reply = await http.get(f"/instances/{instance_id}/costs", headers=stack.headers("researcher"))
    assert reply.status_code == 200, reply.text
    found: dict[str, Any] = reply.json()
    return found


async def test_an_instances_costs_are_billings_and_agree_with_costs(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    grant = await demo_grant(client, stack)
    headers = stack.headers("researcher")
    made = (await client.post("/instances", json=request_body(grant), headers=headers)).json()
    await _running(client, stack, made["id"])
    running_at = time.monotonic()

    async def estimated() -> dict[str, Any]:
        while Decimal((costs := await _costs(client, stack, made["id"]))["estimated_unrated"]) == 0:
            await asyncio.sleep(0.5)
        return costs

    costs = await asyncio.wait_for(estimated(), 30)
    assert costs["project_id"] == grant["project_id"]
    seconds = Decimal(costs["unrated_running_seconds"])
    price = Decimal(costs["hourly_price"]["amount"])
    assert Decimal(costs["estimated_unrated"]) == (seconds * price / 3600).quantize(
        Decimal("0.000001")
    )
    assert Decimal(costs["estimated_total"]) == Decimal(costs["charged"]) + Decimal(
        costs["estimated_unrated"]
    )
    # every hour the instance ran in, from the hour it was created in
    created = datetime.fromisoformat(made["created_at"])
    window = {
        "of": "instance",
        "id": made["id"],
        "since": created.replace(minute=0, second=0, microsecond=0).isoformat(),
        "until": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
    }
    report = await client.get("/costs", params=window, headers=headers)
    assert report.status_code == 200, report.text
    assert Decimal(report.json()["total"]) == Decimal(costs["charged"])
    assert report.json()["resources"] == costs["resources"]

    stopped = await client.post(f"/instances/{made['id']}/stop", headers=headers)
    assert stopped.status_code == 202, stopped.text
    await _stopped(client, stack, made["id"])
    ran_s = Decimal(time.monotonic() - running_at)

    async def unrated() -> Decimal:
        return Decimal((await _costs(client, stack, made["id"]))["unrated_running_seconds"])

    async def standing() -> Decimal:
        """The unrated seconds once two reads 2 s apart agree (billing hears of the stop
        from the inventory's events, a moment after the inventory shows it)."""
        while True:
            first = await unrated()
            await _after(2)
            if await unrated() == first:
                return first

    ran = await asyncio.wait_for(standing(), 15)
    assert abs(ran - ran_s) <= 3, (ran, ran_s)  # what billing counts is what the test saw run
    outsider = await client.get(f"/instances/{uuid.uuid4()}/costs", headers=headers)
    assert outsider.status_code == 404


def _period() -> dict[str, str]:
    """A closed hour of its own, years back."""
    start = datetime(2021, 1, 1, tzinfo=UTC) + timedelta(hours=uuid.uuid4().int % 20_000)
    return {
        "period_start": start.isoformat(),
        "period_end": (start + timedelta(hours=1)).isoformat(),
    }


async def test_the_runs_list_shows_each_run_as_it_is_not_what_one_request_issued(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    admin = stack.headers("admin")
    period = _period()
    started = await client.post("/billing/runs", json=period, headers=admin)
    assert started.status_code == 200, started.text
    run = started.json()
    assert run["issued_now"] == run["invoices"]
    again = (await client.post("/billing/runs", json=period, headers=admin)).json()
    assert (again["run_id"], again["issued_now"]) == (run["run_id"], 0)
    listed = await client.get("/billing/runs", headers=stack.headers("finance"))
    assert listed.status_code == 200, listed.text
    mine = next(r for r in listed.json()["runs"] if r["run_id"] == run["run_id"])
    assert mine["invoices"] == run["invoices"]
    assert "issued_now" not in mine


async def test_pis_and_members_list_their_projects_budgets_and_endpoints(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    grant = await demo_grant(client, stack, "pi")
    url = f"http://127.0.0.1:9/hooks/{uuid.uuid4().hex}"
    body = {"project_id": grant["project_id"], "url": url}
    hook = await client.post("/webhooks", json=body, headers=stack.headers("pi"))
    assert hook.status_code == 201, hook.text
    for who in ("pi", "researcher"):
        budgets = await client.get("/budgets", headers=stack.headers(who))
        assert budgets.status_code == 200, budgets.text
        codes = {b["code"] for b in budgets.json()["budgets"]}
        assert "DEMO-GRANT-1" in codes, who
    for who, sees in (("pi", True), ("researcher", False), ("admin", True)):
        hooks = await client.get("/webhooks", headers=stack.headers(who))
        assert hooks.status_code == 200, hooks.text
        assert (hook.json()["id"] in hooks.text) is sees, who
    everyone = await client.get("/budgets", headers=stack.headers("finance"))
    assert "DEMO-GRANT-1" in {b["code"] for b in everyone.json()["budgets"]}


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[fe80::1]/hooks",
        "http://100.100.100.200/latest/meta-data/",
    ],
)
async def test_endpoints_at_metadata_addresses_are_refused(
    client: httpx.AsyncClient, stack: Stack, url: str
) -> None:
    grant = await demo_grant(client, stack, "pi")
    body = {"project_id": grant["project_id"], "url": url}
    refused = await client.post("/webhooks", json=body, headers=stack.headers("pi"))
    assert refused.status_code == 422, refused.text
    assert refused.json()["field"] == "url"
    assert "metadata" in refused.json()["detail"]


async def test_webhooks_answer_id_and_take_budget_events(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    grant = await demo_grant(client, stack, "pi")
    body = {
        "project_id": grant["project_id"],
        "url": f"http://127.0.0.1:9/budget/{uuid.uuid4().hex}",
        "event_types": ["budget.threshold_crossed", "budget.exhausted"],
    }
    made = await client.post("/webhooks", json=body, headers=stack.headers("pi"))
    assert made.status_code == 201, made.text
    hook = made.json()
    assert "webhook_id" not in hook
    assert made.headers["location"].endswith(f"/webhooks/{hook['id']}")
    assert hook["event_types"] == sorted(body["event_types"])
    gone = await client.delete(f"/webhooks/{hook['id']}", headers=stack.headers("pi"))
    assert gone.status_code == 200, gone.text
    assert gone.json()["id"] == hook["id"]
    assert gone.json()["disabled_at"] is not None
