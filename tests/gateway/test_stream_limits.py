"""Open event streams are limited per token (10) and per user (20): one more is a 429 problem
with Retry-After, and a stream that ends gives its slot back."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.gateway.conftest import Stack

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis, pytest.mark.slow]

PER_TOKEN = 10
PER_USER = 20


async def _person(client: httpx.AsyncClient, stack: Stack) -> tuple[str, str]:
    """A new account of its own (nothing else holds its streams): its email and password."""
    email, password = f"streams-{uuid.uuid4().hex[:8]}@example.org", "streams-password-123"
    made = await client.post(
        "/users",
        json={"email": email, "display_name": "Streams", "password": password},
        headers=stack.headers("admin"),
    )
    assert made.status_code == 201, made.text
    return email, password


async def _token(client: httpx.AsyncClient, email: str, password: str) -> dict[str, str]:
    """A fresh sign-in: a token of its own."""
    reply = await client.post("/auth/login", json={"email": email, "password": password})
    assert reply.status_code == 200, reply.text
    return {"Authorization": f"Bearer {reply.json()['access_token']}"}


class Streams:
    """Event streams held open until closed (or the block ends)."""

    def __init__(self, client: httpx.AsyncClient, stack: contextlib.AsyncExitStack) -> None:
        self.client = client
        self.stack = stack
        self.open: list[contextlib.AsyncExitStack] = []

    async def start(self, headers: dict[str, str]) -> httpx.Response:
        """Open one stream; a refusal is read and closed at once."""
        held = contextlib.AsyncExitStack()
        reply = await held.enter_async_context(
            self.client.stream("GET", "/events/instances", headers=headers)
        )
        if reply.status_code == 200:
            self.open.append(held)
            self.stack.push_async_callback(held.aclose)
        else:
            await reply.aread()
            await held.aclose()
        return reply

    async def close_one(self) -> None:
        """End the first open stream from the client's side."""
        await self.open.pop(0).aclose()


@contextlib.asynccontextmanager
async def streams(client: httpx.AsyncClient) -> AsyncIterator[Streams]:
    async with contextlib.AsyncExitStack() as stack:
        yield Streams(client, stack)


async def test_open_streams_are_limited_per_token_and_per_user(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.api, timeout=30) as client:
        email, password = await _person(client, stack)
        first, second, third = [await _token(client, email, password) for _ in range(3)]
        async with streams(client) as held:
            opened = [(await held.start(first)).status_code for _ in range(PER_TOKEN)]
            assert opened == [200] * PER_TOKEN
            over_token = await held.start(first)
            opened = [(await held.start(second)).status_code for _ in range(PER_USER - PER_TOKEN)]
            assert opened == [200] * (PER_USER - PER_TOKEN)
            over_user = await held.start(third)
            for refused in (over_token, over_user):
                assert refused.status_code == 429, refused.text
                assert refused.headers["content-type"] == "application/problem+json"
                assert refused.json()["code"] == "too_many_requests"
                assert int(refused.headers["retry-after"]) >= 1
            assert "token" in over_token.json()["detail"]
            assert "account" in over_user.json()["detail"]
            await held.close_one()
            deadline = time.monotonic() + 20
            while (reply := await held.start(third)).status_code == 429:
                assert time.monotonic() < deadline, "a closed stream never gave its slot back"
                await asyncio.sleep(0.2)
            assert reply.status_code == 200
