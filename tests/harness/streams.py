"""Watching JetStream streams from tests: what a stream delivers to a pull consumer of the
test's own, decoded by the contract registry."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime
from typing import Self, TypeVar

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from compgrid_events import Event, registry
from tests.runtime.integration.waiting import wait_until

IDLE_S = 60.0
"""How long our ephemeral consumers survive without a pull (the server's default is 5 s)."""

E = TypeVar("E", bound=Event)


class StreamWatch:
    """What one stream delivers under a subject filter to an ephemeral pull consumer of the
    test's own: from the stream's start (``DeliverPolicy.ALL``) or from now on (``NEW``)."""

    def __init__(
        self,
        nc: NatsClient,
        stream: str,
        subject: str,
        *,
        deliver: DeliverPolicy = DeliverPolicy.NEW,
    ) -> None:
        self._nc = nc
        self.stream = stream
        self.subject = subject
        self._deliver = deliver
        self._sub: JetStreamContext.PullSubscription | None = None
        self.messages: list[Msg] = []
        self._received: list[datetime] = []
        self._events: list[Event] = []

    @classmethod
    def of(
        cls,
        nc: NatsClient,
        kind: type[Event],
        *,
        deliver: DeliverPolicy = DeliverPolicy.NEW,
        **tokens: str,
    ) -> StreamWatch:
        """A watch on the events of one kind (on any subject the tokens not given allow)."""
        return StreamWatch(nc, kind.stream.name, kind.subject_for(**tokens), deliver=deliver)

    async def start(self) -> Self:
        self._sub = await self._nc.jetstream().pull_subscribe(
            self.subject,
            stream=self.stream,
            config=ConsumerConfig(deliver_policy=self._deliver, inactive_threshold=IDLE_S),
        )
        return self

    async def stop(self) -> None:
        """Drop the subscription and its consumer (which would otherwise idle for ``IDLE_S``)."""
        if self._sub is None:
            return
        sub, self._sub = self._sub, None
        with contextlib.suppress(nats.js.errors.NotFoundError):
            name = (await sub.consumer_info()).name
            await self._nc.jetstream().delete_consumer(self.stream, name)
        await sub.unsubscribe()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def collect(self) -> list[Msg]:
        """Fetch what arrived since the last call; return every message seen."""
        assert self._sub is not None, "the watch is not started"
        try:
            fetched = await self._sub.fetch(500, timeout=0.3)
        except (TimeoutError, nats.errors.TimeoutError):
            return self.messages
        for msg in fetched:
            await msg.ack()
            self.messages.append(msg)
            self._received.append(msg.metadata.timestamp)
        return self.messages

    async def events(self) -> list[Event]:
        """Every message seen (fetching what arrived), decoded by the contract registry."""
        messages = await self.collect()
        self._events += [registry.decode(m.subject, m.data) for m in messages[len(self._events) :]]
        return list(self._events)

    def received_at(self, event: Event) -> datetime:
        """When the server stored an event this watch returned (its publication time)."""
        return self._received[next(i for i, e in enumerate(self._events) if e is event)]

    async def matching(
        self,
        kind: type[E],
        instance_id: str | None = None,
        where: Callable[[E], bool] | None = None,
    ) -> list[E]:
        """The events of a kind seen so far (fetching what arrived), about one instance and
        passing ``where`` when given."""
        return [
            e
            for e in await self.events()
            if isinstance(e, kind)
            and (instance_id is None or str(getattr(e, "instance_id", "")) == instance_id)
            and (where is None or where(e))
        ]

    async def about(self, instance_id: str) -> list[Event]:
        """Every event seen so far about one instance."""
        return await self.matching(Event, instance_id)

    async def wait_for(
        self,
        kind: type[E],
        instance_id: str | None = None,
        *,
        count: int = 1,
        where: Callable[[E], bool] | None = None,
        timeout_s: float = 15,
    ) -> E:
        """Wait until ``count`` events match (as for ``matching``); return the ``count``-th."""
        found: list[E] = []

        async def enough() -> bool:
            found[:] = await self.matching(kind, instance_id, where)
            return len(found) >= count

        about = f" about {instance_id}" if instance_id else ""
        await wait_until(enough, timeout_s, f"{count} {kind.__name__}{about} on {self.subject}")
        return found[count - 1]

    async def wait_settled(
        self,
        kind: type[E],
        instance_id: str | None = None,
        *,
        count: int = 1,
        where: Callable[[E], bool] | None = None,
        settle_s: float = 0.3,
        timeout_s: float = 15,
    ) -> list[E]:
        """Wait until ``count`` events match, give any that should not come ``settle_s`` to
        arrive too, and return every match."""
        await self.wait_for(kind, instance_id, count=count, where=where, timeout_s=timeout_s)
        await asyncio.sleep(settle_s)
        return await self.matching(kind, instance_id, where)
