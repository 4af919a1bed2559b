"""How many live event streams a caller may hold open at once: per token and per user, counted
in Redis, so the limits hold across every gateway process.

An open stream holds a lease in two Redis sorted sets, its token's and its user's (member: the
stream's id, score: when the lease lapses). Opening one drops lapsed leases and adds its own
only when both sets are below their limits, in one script, so two concurrent opens never both
take the last slot. A stream renews its leases as it sends (at least every keepalive) and gives
them back when it ends; the leases of a process that died lapse by themselves. When Redis does
not answer, each process counts its own streams until it does.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from compgrid_runtime.errors import TooManyRequests
from compgrid_runtime.logs import get_logger
from compgrid_runtime.tokens import Principal

log = get_logger(__name__)

RETRY_AFTER_S = 10
_OPEN = """
local now, lapses, id = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZCARD', key) >= tonumber(ARGV[3 + i]) then return i end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, lapses, id)
  redis.call('EXPIREAT', key, math.ceil(lapses))
end
return 0
"""
_LIMITED = {1: "this token", 2: "your account"}


class StreamSlots:
    """The open streams of every token and user, and the limits on them."""

    def __init__(
        self, redis: Redis, *, per_token: int, per_user: int, lease_s: float, prefix: str
    ) -> None:
        self.redis = redis
        self.limits = (per_token, per_user)
        self.lease_s = lease_s
        self.prefix = prefix
        self._open = redis.register_script(_OPEN)
        self._local: defaultdict[str, set[str]] = defaultdict(set)

    async def open(self, caller: Principal) -> Slot:
        """Take a slot for a new stream, or refuse with 429 when the token or user holds all."""
        keys = [f"{self.prefix}:token:{caller.token_id}", f"{self.prefix}:user:{caller.user_id}"]
        stream_id = uuid.uuid4().hex
        try:
            full = int(
                await self._open(keys, [time.time(), self._lapses(), stream_id, *self.limits])
            )
        except RedisError as exc:
            log.warning("stream limits counted in this process only", error=str(exc))
            full = self._open_here(keys, stream_id)
        if full:
            raise TooManyRequests(
                f"{_LIMITED[full]} already holds {self.limits[full - 1]} open event streams; "
                "close one first",
                retry_after_s=RETRY_AFTER_S,
            )
        return Slot(self, keys, stream_id)

    def _lapses(self) -> float:
        return time.time() + self.lease_s

    def _open_here(self, keys: list[str], stream_id: str) -> int:
        for i, key in enumerate(keys, start=1):
            if len(self._local[key]) >= self.limits[i - 1]:
                return i
        for key in keys:
            self._local[key].add(stream_id)
        return 0

    async def renew(self, keys: list[str], stream_id: str) -> None:
        """Extend a stream's leases."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.zadd(key, {stream_id: self._lapses()}, xx=True)
                pipe.expireat(key, int(self._lapses()) + 1)
            await pipe.execute()

    async def close(self, keys: list[str], stream_id: str) -> None:
        """Give a stream's slots back."""
        for key in keys:
            self._local[key].discard(stream_id)
            if not self._local[key]:
                del self._local[key]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.zrem(key, stream_id)
            await pipe.execute()


class Slot:
    """One open stream's hold on its token's and user's slots."""

    def __init__(self, slots: StreamSlots, keys: list[str], stream_id: str) -> None:
        self.slots = slots
        self.keys = keys
        self.stream_id = stream_id
        self._released = False

    async def hold(self, frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Pass the stream's frames on, renewing the leases, and free the slot when it ends
        (also when the client went away and the response was cancelled)."""
        renewed = time.monotonic()
        try:
            async for frame in frames:
                yield frame
                if time.monotonic() - renewed > self.slots.lease_s / 3:
                    renewed = time.monotonic()
                    await self._quietly(self.slots.renew)
        finally:
            await self.release()

    async def release(self) -> None:
        """Give the slot back (once; later calls do nothing)."""
        if self._released:
            return
        self._released = True
        with anyio.CancelScope(shield=True):
            await self._quietly(self.slots.close)

    async def _quietly(self, step: Any) -> None:
        try:
            await step(self.keys, self.stream_id)
        except RedisError as exc:  # the lease lapses by itself
            log.warning("stream lease not updated", error=str(exc))


class HeldStream(StreamingResponse):
    """A stream's response that gives its slot back when the response ends, also when the
    client left before the first frame (then the body never starts, so its own ``finally``
    never runs)."""

    def __init__(self, slot: Slot, frames: AsyncIterator[bytes], **kwargs: Any) -> None:
        super().__init__(slot.hold(frames), **kwargs)
        self.slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.slot.release()
