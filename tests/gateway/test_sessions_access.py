"""Access as it is now, across services, through the REST API: a project created after signing
in is reachable with the same token, ended sessions and revoked API tokens end their access
tokens at inventory and billing, and password guessing is slowed without locking anyone out."""

from __future__ import annotations

import asyncio
import mailbox
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import Stack

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis, pytest.mark.slow]

PASSWORD = "a perfectly fine passphrase"
WARNING_SUBJECT = "Someone is trying to sign in to your CompGrid account"
SERVICES = {"inventory": "/instances", "billing": "/invoices"}
"""A read served by each service (the gateway only forwards the token)."""


def _address() -> str:
    """A client address of this test alone (the benchmarking range, random host part)."""
    n = uuid.uuid4().int
    return f"198.18.{n % 250}.{(n >> 8) % 250}"


async def _until(check: Callable[[], Awaitable[bool]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"not true after {timeout_s} s")
        await asyncio.sleep(0.1)


async def _account(client: httpx.AsyncClient, stack: Stack, role: str, name: str) -> str:
    email = f"{role}-{uuid.uuid4().hex[:10]}@example.org"
    body = {"email": email, "display_name": name, "password": PASSWORD, "roles": [role]}
    created = await client.post("/users", json=body, headers=stack.headers("admin"))
    assert created.status_code == 201, created.text
    return email


async def _login(client: httpx.AsyncClient, email: str, address: str | None = None) -> Any:
    headers = {"X-Forwarded-For": address or _address()}
    reply = await client.post(
        "/auth/login", json={"email": email, "password": PASSWORD}, headers=headers
    )
    assert reply.status_code == 200, reply.text
    return reply.json()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _statuses(client: httpx.AsyncClient, token: str) -> dict[str, int]:
    """How each service answers the token."""
    return {
        service: (await client.get(path, headers=_bearer(token))).status_code
        for service, path in SERVICES.items()
    }


def _refused_everywhere(client: httpx.AsyncClient, token: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return set((await _statuses(client, token)).values()) == {401}

    return check


async def test_a_pi_uses_a_project_just_created_without_signing_in_again(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    email = await _account(client, stack, "pi", "Ada Lovelace")
    pi = _bearer((await _login(client, email))["access_token"])
    made = await client.post("/projects", json={"name": f"Now {uuid.uuid4().hex[:8]}"}, headers=pi)
    assert made.status_code == 201, made.text
    project_id = made.json()["id"]
    answers: dict[str, httpx.Response] = {}

    async def contacts_set() -> bool:
        body = {"emails": ["grants@example.org"]}
        answers["contacts"] = await client.put(
            f"/projects/{project_id}/contacts", json=body, headers=pi
        )
        return answers["contacts"].status_code == 200

    async def webhook_made() -> bool:
        hook = {"url": "https://hooks.example.org/now", "project_id": project_id}
        answers["hook"] = await client.post("/webhooks", json=hook, headers=pi)
        return answers["hook"].status_code == 201

    # Billing learns the project itself from auth's ProjectCreated event within moments; the
    # PI's access to it is current at once. Before, the same token stayed refused for good.
    await _until(contacts_set, timeout_s=30)
    await _until(webhook_made, timeout_s=30)
    assert answers["contacts"].json()["emails"] == ["grants@example.org"]
    assert answers["hook"].json()["project_id"] == project_id


async def test_logout_ends_the_access_token_at_inventory_and_billing(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    email = await _account(client, stack, "finance", "Fin Ance")
    other = await _login(client, email)
    pair = await _login(client, email)
    assert 401 not in (await _statuses(client, pair["access_token"])).values()

    out = await client.post("/auth/logout", json={"refresh_token": pair["refresh_token"]})
    assert out.status_code == 204, out.text

    await _until(_refused_everywhere(client, pair["access_token"]), timeout_s=5)
    refreshed = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert refreshed.status_code == 401
    # another device's session goes on
    assert 401 not in (await _statuses(client, other["access_token"])).values()


async def test_revoking_an_api_token_ends_the_access_tokens_it_was_traded_for(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    email = await _account(client, stack, "finance", "Script Owner")
    session = _bearer((await _login(client, email))["access_token"])
    made = await client.post("/me/api-tokens", json={"name": "nightly export"}, headers=session)
    assert made.status_code == 201, made.text
    traded = await client.post("/auth/token", json={"api_token": made.json()["token"]})
    assert traded.status_code == 200, traded.text
    access = traded.json()["access_token"]
    assert 401 not in (await _statuses(client, access)).values()

    revoked = await client.delete(f"/me/api-tokens/{made.json()['id']}", headers=session)
    assert revoked.status_code == 200, revoked.text

    await _until(_refused_everywhere(client, access), timeout_s=5)
    again = await client.post("/auth/token", json={"api_token": made.json()["token"]})
    assert again.status_code == 401
    assert (await client.get("/me", headers=session)).status_code == 200


async def _held_back(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], headers: dict[str, str]
) -> list[httpx.Response]:
    """Send until refused with at least 2 s still to wait, so that the very next attempt from
    there is surely refused too (a 1 s wait can run out while a slow machine hashes)."""
    replies = []
    for _ in range(60):
        replies.append(await client.post(path, json=body, headers=headers))
        if replies[-1].status_code == 429 and int(replies[-1].headers["Retry-After"]) >= 2:
            return replies
        await asyncio.sleep(0.1)
    pytest.fail("never held back for 2 s or more")


def _warnings(stack: Stack, email: str) -> int:
    box = mailbox.Maildir(stack.state_dir / "mail", create=False)
    return sum(1 for m in box if email in str(m["To"]) and m["Subject"] == WARNING_SUBJECT)


async def test_thirty_wrong_passwords_get_429_and_the_owner_still_signs_in_elsewhere(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    email = await _account(client, stack, "member", "Tar Get")
    attacker = {"X-Forwarded-For": _address()}
    wrong = {"email": email, "password": "not the password at all"}

    replies = [await client.post("/auth/login", json=wrong, headers=attacker) for _ in range(30)]

    throttled = [r for r in replies if r.status_code == 429]
    assert len(throttled) >= 20, [r.status_code for r in replies]
    for reply in throttled:
        assert reply.headers["content-type"] == "application/problem+json"
        assert reply.json()["code"] == "too_many_attempts"
        assert int(reply.headers["Retry-After"]) >= 1
    right = {"email": email, "password": PASSWORD}
    await _held_back(client, "/auth/login", wrong, attacker)
    assert (await client.post("/auth/login", json=right, headers=attacker)).status_code == 429
    assert await _login(client, email, address=_address())  # the owner, from elsewhere
    assert _warnings(stack, email) == 1  # told once, not thirty times


async def test_wrong_current_passwords_are_throttled_too(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    email = await _account(client, stack, "member", "Pass Word")
    token = _bearer((await _login(client, email))["access_token"])
    thief = {**token, "X-Forwarded-For": _address()}
    body = {"current_password": "a wrong guess", "new_password": "another fine passphrase 7"}

    replies = [await client.post("/me/password", json=body, headers=thief) for _ in range(5)]
    replies += await _held_back(client, "/me/password", body, thief)

    assert [r.status_code for r in replies[:5]] == [422] * 5
    throttled = [r for r in replies[5:] if r.status_code == 429]
    assert throttled
    assert {r.status_code for r in replies[5:]} <= {422, 429}
    assert all(r.json()["code"] == "too_many_attempts" for r in throttled)
