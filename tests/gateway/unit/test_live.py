"""The live stream's choices, with a stand-in for the inventory: which changes a stream
carries, what happens when the inventory cannot answer, and when the caller's token lapses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from compgrid_events.rpc import RpcError
from compgrid_gateway import live
from compgrid_gateway.live import Hub, stream
from compgrid_runtime.errors import Unauthorized
from compgrid_runtime.rpc import RemoteError


class Inventory:
    """Answers ``instances.get`` per instance id: True (visible), or an error status."""

    def __init__(self, answers: dict[str, list[int | bool]]) -> None:
        self.answers = answers
        self.asked: list[str] = []
        self.signed_in = True

    def principal(self) -> None:
        """The caller's token verified here: refused once the caller signed out."""
        if not self.signed_in:
            raise Unauthorized("invalid token")

    async def ask(self, service: str, operation: str, body: dict[str, Any]) -> Any:
        instance = body["instance_id"]
        self.asked.append(instance)
        answer = self.answers[instance].pop(0)
        if answer is True:
            return {"id": instance, "state": "running", "version": 1}
        raise RemoteError(RpcError(status=int(answer), code=str(answer), message=str(answer)))


def change(instance: str, state: str, version: int) -> dict[str, Any]:
    return {
        "event_id": f"e-{instance}-{version}",
        "instance_id": instance,
        "project_id": "p",
        "state": state,
        "version": version,
        "occurred_at": "2026-11-29T12:00:00Z",
    }


async def frames(hub: Hub, ctx: Any, events: list[dict[str, Any]]) -> list[str]:
    got: list[str] = []
    lines: AsyncIterator[bytes] = stream(hub, ctx, None, keepalive_s=0.05)
    await lines.__anext__()  # retry: the stream now listens
    for event in events:
        hub.publish(event)

    async def read() -> None:
        async for line in lines:
            text = line.decode()
            if text.startswith(": keepalive"):
                return
            got.append(text)

    await asyncio.wait_for(read(), 5)
    return got


async def test_only_what_the_inventory_shows_the_caller_is_streamed() -> None:
    inventory = Inventory({"a": [True], "b": [404], "c": [403]})
    events = [change("a", "scheduled", 2), change("b", "running", 3), change("c", "running", 2)]
    events.append(change("a", "running", 3))
    got = await frames(Hub(), inventory, events)
    assert len(got) == 2
    assert all('"instance_id":"a"' in f for f in got)
    assert inventory.asked == ["a", "b", "c"]  # each instance is asked about once


async def test_an_inventory_that_cannot_answer_is_asked_again_next_time() -> None:
    inventory = Inventory({"a": [503, True]})
    got = await frames(Hub(), inventory, [change("a", "scheduled", 2), change("a", "running", 3)])
    assert len(got) == 1
    assert '"state":"running"' in got[0]
    assert inventory.asked == ["a", "a"]


async def test_a_lapsed_token_ends_the_stream_with_an_error_event() -> None:
    inventory = Inventory({"a": [401]})
    hub = Hub()
    lines = stream(hub, inventory, None, keepalive_s=5)  # type: ignore[arg-type]
    await lines.__anext__()
    hub.publish(change("a", "running", 3))
    last = await asyncio.wait_for(lines.__anext__(), 5)
    assert last.startswith(b"event: error\n")
    assert b"sign in again" in last
    with pytest.raises(StopAsyncIteration):  # the stream ended there
        await asyncio.wait_for(lines.__anext__(), 5)
    assert hub.listeners == 0  # the stream stopped listening


async def test_a_token_no_longer_accepted_ends_the_stream_at_the_next_keepalive() -> None:
    inventory = Inventory({})
    lines = stream(Hub(), inventory, None, keepalive_s=0.05)  # type: ignore[arg-type]
    await lines.__anext__()
    assert await asyncio.wait_for(lines.__anext__(), 5) == b": keepalive\n\n"
    inventory.signed_in = False  # signed out, or the API token was revoked
    last = await asyncio.wait_for(lines.__anext__(), 5)
    assert last.startswith(b"event: error\n")
    assert b"sign in again" in last
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(lines.__anext__(), 5)
    assert inventory.asked == []  # decided here, without asking the inventory


async def test_a_token_no_longer_accepted_gets_no_further_change() -> None:
    inventory = Inventory({"a": [True]})
    hub = Hub()
    lines = stream(hub, inventory, None, keepalive_s=5)  # type: ignore[arg-type]
    await lines.__anext__()
    hub.publish(change("a", "scheduled", 2))
    assert b'"state":"scheduled"' in await asyncio.wait_for(lines.__anext__(), 5)
    inventory.signed_in = False
    hub.publish(change("a", "running", 3))
    assert (await asyncio.wait_for(lines.__anext__(), 5)).startswith(b"event: error\n")


async def test_what_the_inventory_showed_is_asked_again_after_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(live, "REVISIT_S", 0.0)  # every answer is already old
    inventory = Inventory({"a": [True, 404]})  # then removed from the project
    got = await frames(Hub(), inventory, [change("a", "scheduled", 2), change("a", "running", 3)])
    assert len(got) == 1
    assert '"state":"scheduled"' in got[0]
    assert inventory.asked == ["a", "a"]
