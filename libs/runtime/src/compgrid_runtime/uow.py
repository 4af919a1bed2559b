"""Unit of work: one transaction for the state change, the events it implies and the inbox.

It rolls back unless committed. Events emitted inside it are written to the outbox in the same
transaction (with the current trace context), so they are published if and only if the state
change is committed. ``claim`` records an applied event id for idempotent consumers.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Self
from uuid import UUID

from sqlalchemy import MetaData, insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from compgrid_events import Event
from compgrid_runtime.faults import fault_point
from compgrid_runtime.messaging_tables import inbox_table, outbox_table
from compgrid_runtime.tracing import inject_headers


def outbox_row(event: Event) -> dict[str, object]:
    """Return the outbox row of an event, with the current trace headers."""
    return {
        "event_id": event.event_id,
        "subject": event.subject,
        "event_type": event.event_type(),
        "aggregate_id": event.aggregate_id,
        "payload": event.to_json(),
        "headers": inject_headers(),
    }


class UnitOfWork:
    """An async context manager around one session and transaction."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        metadata: MetaData,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._outbox = outbox_table(metadata)
        self._inbox = inbox_table(metadata)
        self._on_commit = on_commit
        self._events: list[Event] = []
        self._committed = False
        self.session: AsyncSession

    async def __aenter__(self) -> Self:
        self.session = self._sessions()
        await self.session.begin()
        self._events = []
        self._committed = False
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if not self._committed:
                await self.session.rollback()
        finally:
            await self.session.close()

    def emit(self, *events: Event) -> None:
        """Queue events for the outbox; they are written on commit."""
        self._events.extend(events)

    async def claim(self, consumer: str, event: Event) -> bool:
        """Record that ``consumer`` applies ``event``; False when it was applied before."""
        return event.event_id in await self.claim_many(consumer, [event])

    async def claim_many(self, consumer: str, events: list[Event]) -> set[UUID]:
        """Record several events in one statement; return the ids not applied before."""
        rows = [
            {"consumer": consumer, "event_id": e.event_id, "subject": e.subject} for e in events
        ]
        statement = (
            pg_insert(self._inbox)
            .values(rows)
            .on_conflict_do_nothing()
            .returning(self._inbox.c.event_id)
        )
        return set((await self.session.execute(statement)).scalars())

    @property
    def committed(self) -> bool:
        """Return True once this unit of work has committed."""
        return self._committed

    async def commit(self) -> None:
        """Write queued events to the outbox and commit everything at once."""
        if self._events:
            await self.session.execute(insert(self._outbox), [outbox_row(e) for e in self._events])
        await self.session.commit()
        fault_point("uow.after_commit")
        self._committed = True
        self._events = []
        if self._on_commit is not None:
            self._on_commit()


UnitOfWorkFactory = Callable[[], UnitOfWork]
