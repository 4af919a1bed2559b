"""Live instance state for browsers and the CLI: server-sent events.

One core NATS subscription per gateway process on ``inventory.instance.state_changed`` fans the
changes out to every open stream. Which changes a stream may carry is the inventory's decision:
the first change of an instance a stream sees is checked with ``instances.get`` under the
caller's token, and the answer is remembered for that stream for ``REVISIT_S``. The token itself
is verified again (locally) before every frame, so a stream ends with the session that opened
it: sign-out, a revoked API token, a disabled account. A stream for one instance starts with
the instance as it is now, so a client never misses the change it waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from compgrid_events.inventory import InstanceStateChanged
from compgrid_gateway.backend import Ctx
from compgrid_runtime.errors import DomainError, Unauthorized
from compgrid_runtime.logs import get_logger

log = get_logger(__name__)

SUBJECT = InstanceStateChanged.subject_for()
QUEUE_SIZE = 1000
REVISIT_S = 30.0
"""How long a stream trusts the inventory's answer about an instance: someone removed from a
project stops receiving its changes within this time, at one ``instances.get`` per instance
and stream in that time."""
_KEEPALIVE: dict[str, Any] = {}


class Hub:
    """The process's subscription and the queues of the open streams."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._sub: Subscription | None = None
        self._ended = False

    async def start(self, nc: NatsClient) -> None:
        """Subscribe (core NATS: only changes from now on, nothing durable)."""
        self._sub = await nc.subscribe(SUBJECT, cb=self._on_message)

    async def stop(self) -> None:
        """Unsubscribe and end every stream."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        self.end_streams()

    def end_streams(self) -> None:
        """End every open stream, and any opened from now on: the process is stopping, and a
        graceful stop waits for every open response."""
        self._ended = True
        for queue in list(self._queues):
            with contextlib.suppress(asyncio.QueueEmpty):
                if queue.full():  # the end matters more than a change the client missed
                    queue.get_nowait()
            queue.put_nowait(None)

    @property
    def listeners(self) -> int:
        """How many streams are open."""
        return len(self._queues)

    async def _on_message(self, msg: Msg) -> None:
        try:
            event = json.loads(msg.data)
        except ValueError:
            return
        self.publish(event)

    def publish(self, event: dict[str, Any]) -> None:
        """Hand one change to every open stream."""
        for queue in list(self._queues):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:  # a stream that does not read is closed, not waited for
                self._queues.discard(queue)
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(None)

    @contextlib.contextmanager
    def listen(self) -> Any:
        """A queue receiving every change while the block runs."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(QUEUE_SIZE)
        if self._ended:
            queue.put_nowait(None)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)


def frame(event: str, data: dict[str, Any], event_id: str | None = None) -> bytes:
    """One server-sent event."""
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _change(event: dict[str, Any]) -> dict[str, Any]:
    return {
        "instance_id": event.get("instance_id"),
        "project_id": event.get("project_id"),
        "state": event.get("state"),
        "version": event.get("version"),
        "reason": event.get("reason", ""),
        "reason_code": event.get("reason_code"),
        "at": event.get("occurred_at"),
    }


async def stream(
    hub: Hub, ctx: Ctx, instance_id: UUID | None, keepalive_s: float
) -> AsyncIterator[bytes]:
    """The caller's instance changes as server-sent events, until the client leaves.

    With ``instance_id`` the stream starts with an ``instance`` event holding the instance as
    it is now (after listening began, so no change falls between); a missing or hidden
    instance is refused before the stream starts (the caller checks first, see ``opening``).
    When the caller's token lapses, or is no longer accepted, the stream ends with an
    ``error`` event."""
    visible: dict[str, bool] = {}
    with hub.listen() as queue:
        yield b"retry: 3000\n\n"
        if instance_id is not None:
            try:
                now = await ctx.ask("inventory", "instances.get", {"instance_id": str(instance_id)})
            except DomainError as exc:
                yield frame("error", {"code": exc.code, "detail": exc.message})
                return
            visible[str(instance_id)] = True
            yield frame("instance", now)
        asked_at = time.monotonic()
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), keepalive_s)
            except TimeoutError:
                event = _KEEPALIVE
            if event is None:
                return
            try:
                ctx.principal()  # signed out, revoked or disabled since the last frame
            except Unauthorized as exc:
                detail = "the token is no longer valid; sign in again"
                yield frame("error", {"code": exc.code, "detail": detail})
                return
            if time.monotonic() - asked_at > REVISIT_S:
                visible.clear()
                asked_at = time.monotonic()
            if event is _KEEPALIVE:
                yield b": keepalive\n\n"
                continue
            target = str(event.get("instance_id"))
            if instance_id is not None and target != str(instance_id):
                continue
            if target not in visible:
                try:
                    allowed = await _may_see(ctx, target)
                except Unauthorized as exc:
                    yield frame("error", {"code": exc.code, "detail": exc.message})
                    return
                if allowed is None:  # the inventory could not tell now: ask again next time
                    continue
                visible[target] = allowed
            if visible[target]:
                yield frame("state", _change(event), str(event.get("event_id", "")) or None)


async def _may_see(ctx: Ctx, instance_id: str) -> bool | None:
    """Whether the caller may see the instance (the inventory decides): None when it could not
    be asked; Unauthorized once the caller's token is no longer accepted."""
    try:
        await ctx.ask("inventory", "instances.get", {"instance_id": instance_id})
    except DomainError as exc:
        status = exc.status
        if status == 401:
            raise Unauthorized("the token is no longer valid; sign in again") from exc
        if status in (403, 404):
            return False
        return None
    return True
