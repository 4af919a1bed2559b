"""Open-stream limits when Redis does not answer: each process counts its own streams."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from starlette.requests import ClientDisconnect

from compgrid_gateway.streams import HeldStream, StreamSlots
from compgrid_runtime.embedded import free_port
from compgrid_runtime.errors import TooManyRequests
from compgrid_runtime.tokens import Principal


def _caller(user_id: uuid.UUID) -> Principal:
    return Principal(user_id=user_id, roles=frozenset(), token_id=uuid.uuid4().hex)


async def _frames() -> AsyncIterator[bytes]:
    yield b": hello\n\n"


async def test_limits_hold_in_the_process_without_redis() -> None:
    redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    slots = StreamSlots(redis, per_token=2, per_user=3, lease_s=60, prefix="unit")
    user = uuid.uuid4()
    token, other_token = _caller(user), _caller(user)
    held = [await slots.open(token), await slots.open(token)]
    with pytest.raises(TooManyRequests, match="this token"):
        await slots.open(token)
    await slots.open(other_token)
    with pytest.raises(TooManyRequests, match="your account") as refused:
        await slots.open(other_token)
    assert refused.value.headers["Retry-After"] == "10"
    assert [frame async for frame in held[0].hold(_frames())] == [b": hello\n\n"]
    await slots.open(other_token)  # the stream that ended gave its slot back
    await redis.aclose()


async def test_a_client_gone_before_the_first_frame_gives_the_slot_back() -> None:
    redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    slots = StreamSlots(redis, per_token=1, per_user=1, lease_s=60, prefix="unit")
    caller = _caller(uuid.uuid4())
    response = HeldStream(await slots.open(caller), _frames(), media_type="text/event-stream")
    with pytest.raises(TooManyRequests):
        await slots.open(caller)

    async def gone() -> dict[str, str]:
        return {"type": "http.disconnect"}

    async def send(message: object) -> None:
        raise OSError("the client went away")

    scope = {"type": "http", "asgi": {"spec_version": "2.4"}}
    with pytest.raises(ClientDisconnect):  # before the body started
        await response(scope, gone, send)
    await slots.open(caller)  # the slot came back although no frame was sent
    await redis.aclose()
