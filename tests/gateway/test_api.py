"""The REST API through HTTP against the whole platform: sessions and API tokens, requests
answered 202 with a Location and followed live, Idempotency-Key, ETag/If-Match, pages, filters
and sorting, costs, the owner's dashboard."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import PASSWORDS, Stack
from tests.gateway.flows import demo_grant, events, request_body

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis, pytest.mark.slow]


async def _instances(http: httpx.AsyncClient, stack: Stack, **params: Any) -> list[dict[str, Any]]:
    reply = await http.get(
        "/instances", params={"limit": 500, **params}, headers=stack.headers("researcher")
    )
    assert reply.status_code == 200, reply.text
    items: list[dict[str, Any]] = reply.json()["items"]
    return items


async def _until_state(
    http: httpx.AsyncClient, stack: Stack, instance_id: str, state: str
) -> dict[str, Any]:
    async def watch() -> dict[str, Any]:
        async for name, data in events(http, stack.headers("researcher"), instance_id=instance_id):
            if name in ("instance", "state") and data["state"] == state:
                return data
        raise AssertionError("the stream ended")

    return await asyncio.wait_for(watch(), 60)


async def test_sessions_refresh_logout_and_api_tokens(client: httpx.AsyncClient) -> None:
    email, password = PASSWORDS["pi"]
    login = await client.post("/auth/login", json={"email": email, "password": password})
    assert login.status_code == 200
    pair = login.json()
    me = await client.get("/me", headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert me.json()["email"] == email
    renewed = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert renewed.status_code == 200
    again = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert again.status_code == 401  # a refresh token works once
    new = renewed.json()
    assert (
        await client.post("/auth/logout", json={"refresh_token": new["refresh_token"]})
    ).status_code == 204
    after = await client.post("/auth/refresh", json={"refresh_token": new["refresh_token"]})
    assert after.status_code == 401
    wrong = await client.post("/auth/login", json={"email": email, "password": "nope"})
    assert wrong.status_code == 401
    assert wrong.json()["code"] == "login_failed"

    # the logged-out session's access token ends too (test_sessions_access.py): sign in again
    signed_in = await client.post("/auth/login", json={"email": email, "password": password})
    headers = {"Authorization": f"Bearer {signed_in.json()['access_token']}"}
    made = await client.post("/me/api-tokens", json={"name": "ci"}, headers=headers)
    assert made.status_code == 201
    assert made.headers["location"].startswith("/api/v1/me/api-tokens/")
    secret = made.json()["token"]
    traded = await client.post("/auth/token", json={"api_token": secret})
    assert traded.status_code == 200
    script = {"Authorization": f"Bearer {traded.json()['access_token']}"}
    assert (await client.get("/me", headers=script)).json()["email"] == email
    listed = await client.get("/me/api-tokens", headers=headers)
    assert made.json()["id"] in [t["id"] for t in listed.json()]
    assert all("token" not in t for t in listed.json())
    revoked = await client.delete(f"/me/api-tokens/{made.json()['id']}", headers=headers)
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    assert (await client.post("/auth/token", json={"api_token": secret})).status_code == 401


async def test_request_is_accepted_with_a_location_and_followed_live_to_running(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    grant = await demo_grant(client, stack)
    headers = stack.headers("researcher")
    seen: list[tuple[str, dict[str, Any]]] = []
    opened = asyncio.Event()

    async def follow() -> None:
        async with httpx.AsyncClient(base_url=stack.api, timeout=60) as http:
            async for name, data in events(http, headers):
                opened.set()
                seen.append((name, data))
                if name == "state" and data["state"] == "running":
                    return

    async def first_keepalive_or_soon() -> None:
        await asyncio.sleep(1.0)  # the stream is listening once its headers arrived
        opened.set()

    watcher = asyncio.create_task(follow())
    await asyncio.wait_for(first_keepalive_or_soon(), 5)
    reply = await client.post("/instances", json=request_body(grant), headers=headers)
    assert reply.status_code == 202, reply.text
    instance = reply.json()
    assert reply.headers["location"] == f"/api/v1/instances/{instance['id']}"
    assert instance["state"] in ("requested", "scheduled")
    await asyncio.wait_for(watcher, 60)
    states = [d["state"] for n, d in seen if n == "state" and d["instance_id"] == instance["id"]]
    assert states[-1] == "running"
    assert "scheduled" in states
    versions = [
        d["version"] for n, d in seen if n == "state" and d["instance_id"] == instance["id"]
    ]
    assert versions == sorted(versions)
    now = await client.get(reply.headers["location"].removeprefix("/api/v1"), headers=headers)
    assert now.json()["state"] == "running"
    assert now.json()["host"] is not None


async def test_a_stream_for_one_instance_starts_with_it_as_it_is(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    grant = await demo_grant(client, stack)
    headers = stack.headers("researcher")
    made = (await client.post("/instances", json=request_body(grant), headers=headers)).json()
    running = await _until_state(client, stack, made["id"], "running")
    assert running["instance_id" if "instance_id" in running else "id"] == made["id"]
    stop = await client.post(f"/instances/{made['id']}/stop", headers=headers)
    assert stop.status_code == 202
    assert stop.headers["location"] == f"/api/v1/instances/{made['id']}"
    stopped = await _until_state(client, stack, made["id"], "stopped")
    assert stopped["state"] == "stopped"
    missing = await client.get(
        "/events/instances", params={"instance_id": str(uuid.uuid4())}, headers=headers
    )
    assert missing.status_code == 404
    anonymous = await client.get("/events/instances")
    assert anonymous.status_code == 401


async def test_idempotency_key_never_creates_two_instances(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    grant = await demo_grant(client, stack)
    headers = {**stack.headers("researcher"), "Idempotency-Key": uuid.uuid4().hex}
    body = request_body(grant)
    before = len(await _instances(client, stack))
    first = await client.post("/instances", json=body, headers=headers)
    retried = await client.post("/instances", json=body, headers=headers)
    assert first.status_code == retried.status_code == 202
    assert retried.json()["id"] == first.json()["id"]
    assert retried.headers["location"] == first.headers["location"]
    assert retried.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    # a fresh token of the same person is the same caller
    fresh = {
        "Authorization": f"Bearer {stack.login('researcher')}",
        "Idempotency-Key": headers["Idempotency-Key"],
    }
    assert (await client.post("/instances", json=body, headers=fresh)).json()["id"] == first.json()[
        "id"
    ]
    reused = await client.post("/instances", json={**body, "name": "other"}, headers=headers)
    assert reused.status_code == 422
    assert reused.json()["code"] == "idempotency_key_reused"
    assert len(await _instances(client, stack)) == before + 1

    # many concurrent retries: one instance, every answer is it or "still in progress"
    key = {**stack.headers("researcher"), "Idempotency-Key": uuid.uuid4().hex}
    again = request_body(grant)
    replies = await asyncio.gather(
        *(client.post("/instances", json=again, headers=key) for _ in range(6))
    )
    ids = {r.json()["id"] for r in replies if r.status_code == 202}
    assert len(ids) == 1
    assert {r.status_code for r in replies} <= {202, 409}
    assert all(
        r.json()["code"] == "idempotency_in_progress" for r in replies if r.status_code == 409
    )
    assert len(await _instances(client, stack)) == before + 2


async def test_updates_guarded_by_etags(client: httpx.AsyncClient, stack: Stack) -> None:
    admin = stack.headers("admin")
    hosts = (await client.get("/hosts", headers=admin)).json()["items"]
    host = next(h for h in hosts if h["name"] == "demo-host-03")
    read = await client.get(f"/hosts/{host['id']}", headers=admin)
    tag = read.headers["etag"]
    assert tag == f'"{read.json()["version"]}"'
    changed = await client.patch(
        f"/hosts/{host['id']}", json={"labels": {"rack": "r7"}}, headers={**admin, "If-Match": tag}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["labels"] == {"rack": "r7"}
    assert changed.headers["etag"] != tag
    lost = await client.patch(
        f"/hosts/{host['id']}", json={"labels": {"rack": "r9"}}, headers={**admin, "If-Match": tag}
    )
    assert lost.status_code == 412
    assert lost.json()["code"] == "precondition_failed"
    assert (await client.get(f"/hosts/{host['id']}", headers=admin)).json()["labels"] == {
        "rack": "r7"
    }
    back = await client.patch(
        f"/hosts/{host['id']}",
        json={"labels": host["labels"]},
        headers={**admin, "If-Match": changed.headers["etag"]},
    )
    assert back.status_code == 200

    pi = stack.headers("pi")
    code = await demo_grant(client, stack, "pi")
    current = await client.get(f"/budget-codes/{code['id']}", headers=pi)
    blind = await client.patch(f"/budget-codes/{code['id']}", json={"name": "Renamed"}, headers=pi)
    assert blind.status_code == 428
    assert blind.json()["field"] == "If-Match"
    renamed = await client.patch(
        f"/budget-codes/{code['id']}",
        json={"name": "Renamed grant"},
        headers={**pi, "If-Match": current.headers["etag"]},
    )
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == "Renamed grant"
    stale = await client.patch(
        f"/budget-codes/{code['id']}",
        json={"name": "Lost"},
        headers={**pi, "If-Match": current.headers["etag"]},
    )
    assert stale.status_code == 412
    restored = await client.patch(
        f"/budget-codes/{code['id']}",
        json={"name": code["name"]},
        headers={**pi, "If-Match": renamed.headers["etag"]},
    )
    assert restored.json()["name"] == code["name"]


async def test_lists_page_filter_and_sort(client: httpx.AsyncClient, stack: Stack) -> None:
    grant = await demo_grant(client, stack)
    headers = stack.headers("researcher")
    tag = uuid.uuid4().hex[:6]
    made = []
    for i in range(5):
        reply = await client.post(
            "/instances", json=request_body(grant, name=f"page-{tag}-{i}"), headers=headers
        )
        made.append(reply.json()["id"])
    pages: list[list[str]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, "name": f"page-{tag}"}
        if cursor:
            params["after"] = cursor
        page = (await client.get("/instances", params=params, headers=headers)).json()
        pages.append([i["id"] for i in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [i for p in pages for i in p] == list(reversed(made))  # newest first
    oldest = (
        await client.get(
            "/instances",
            params={"name": f"page-{tag}", "sort": "created_at", "limit": 3},
            headers=headers,
        )
    ).json()
    assert [i["id"] for i in oldest["items"]] == made[:3]
    rest = (
        await client.get(
            "/instances",
            params={"name": f"page-{tag}", "sort": "created_at", "after": oldest["next_cursor"]},
            headers=headers,
        )
    ).json()
    assert [i["id"] for i in rest["items"]] == made[3:]
    await _until_state(client, stack, made[-1], "running")
    running = await _instances(client, stack, state="running", name=f"page-{tag}")
    assert made[-1] in [i["id"] for i in running]
    assert all(i["state"] == "running" for i in running)
    bad_sort = await client.get("/instances", params={"sort": "name"}, headers=headers)
    assert bad_sort.status_code == 422
    assert bad_sort.json()["field"] == "sort"
    bad_cursor = await client.get("/instances", params={"after": "nope"}, headers=headers)
    assert bad_cursor.status_code == 422
    assert bad_cursor.json()["field"] == "after"


async def test_instance_costs_price_what_ran(client: httpx.AsyncClient, stack: Stack) -> None:
    grant = await demo_grant(client, stack)
    headers = stack.headers("researcher")
    made = (await client.post("/instances", json=request_body(grant), headers=headers)).json()
    await _until_state(client, stack, made["id"], "running")

    async def estimated() -> dict[str, Any]:
        while True:
            reply = await client.get(f"/instances/{made['id']}/costs", headers=headers)
            assert reply.status_code == 200, reply.text
            costs: dict[str, Any] = reply.json()
            if Decimal(costs["unrated_running_seconds"]) > 0:
                return costs
            await asyncio.sleep(1)

    costs = await asyncio.wait_for(estimated(), 60)
    assert costs["currency"] == "EUR"
    price = {k: Decimal(v) if k == "amount" else v for k, v in costs["hourly_price"].items()}
    assert price == {k: Decimal(v) if k == "amount" else v for k, v in made["hourly_price"].items()}
    seconds = Decimal(costs["unrated_running_seconds"])
    expected = (seconds * Decimal(made["hourly_price"]["amount"]) / 3600).quantize(
        Decimal("0.000001")
    )
    assert Decimal(costs["estimated_unrated"]) == expected
    assert Decimal(costs["charged"]) == 0  # no hour has closed yet
    assert Decimal(costs["estimated_total"]) == expected

    # billing estimates from the running report, so metering's first sample may come later
    async def metered() -> dict[str, Any]:
        while True:
            reply = await client.get(f"/instances/{made['id']}/usage", headers=headers)
            if reply.status_code != 404:
                assert reply.status_code == 200, reply.text
                found: dict[str, Any] = reply.json()
                return found
            await asyncio.sleep(0.5)

    usage = await asyncio.wait_for(metered(), 60)
    # billing counts from the running report, metering from its samples (every 2 s here)
    assert abs(Decimal(usage["total"]["running_seconds"]) - seconds) < 10
    since = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    until = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    report = await client.get(
        "/costs",
        params={"of": "instance", "id": made["id"], "since": since, "until": until},
        headers=headers,
    )
    assert report.status_code == 200
    assert Decimal(report.json()["total"]) == 0
    project = await client.get(
        "/costs",
        params={"of": "project", "id": grant["project_id"], "since": since, "until": until},
        headers=headers,
    )
    assert project.status_code == 403  # a member sees their own instances' costs only
    backwards = await client.get(
        "/costs",
        params={"of": "instance", "id": made["id"], "since": until, "until": since},
        headers=headers,
    )
    assert backwards.status_code == 422


async def test_owner_dashboard(client: httpx.AsyncClient, stack: Stack) -> None:
    admin = stack.headers("admin")
    capacity = await client.get("/stats/utilisation", params={"per_host": "true"}, headers=admin)
    assert capacity.status_code == 200, capacity.text
    demo = [row for row in capacity.json() if row["datacenter"].startswith("demo-dc/")]
    assert len(demo) == 4  # one row per host
    assert sum(row["vcpus_claimed"] for row in demo) > 0
    since = (datetime.now(UTC) - timedelta(days=30)).isoformat()
    until = datetime.now(UTC).isoformat()
    money = await client.get(
        "/stats/billing", params={"since": since, "until": until}, headers=admin
    )
    assert money.status_code == 200, money.text
    assert set(money.json()) >= {"earnings", "by_instance_type", "top_projects", "top_users"}
    researcher = await client.get(
        "/stats/billing",
        params={"since": since, "until": until},
        headers=stack.headers("researcher"),
    )
    assert researcher.status_code == 403
    audit = await client.get("/audit", params={"limit": 5}, headers=admin)
    assert audit.status_code == 200
    assert len(audit.json()["items"]) == 5
    older = await client.get(
        "/audit", params={"limit": 5, "before_id": audit.json()["items"][-1]["id"]}, headers=admin
    )
    assert all(e["id"] < audit.json()["items"][-1]["id"] for e in older.json()["items"])
