"""Applying events exactly once: the inbox claim and the effect share one transaction.

Policy: the events of one pull batch are applied in **one** transaction, in arrival order,
after claiming all their ids in the inbox with one statement, so a burst costs one commit
instead of one per message. If anything in the batch fails, it is rolled back and every event
is applied again in a transaction of its own, so one bad event cannot fail its neighbours and
each gets its own error. A lone message is simply a batch of one: nothing waits to fill one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from opentelemetry import trace

from compgrid_events import Event
from compgrid_runtime.uow import UnitOfWork

Handler = Callable[..., Awaitable[None]]


@dataclass(frozen=True)
class Pending:
    """One event to apply, with its handler and the span it belongs to."""

    event: Event
    handler: Handler
    span: trace.Span


Outcome = bool | Exception
"""True: applied now; False: applied before (a duplicate); an exception: it failed."""


async def apply_batch(
    consumer: str, uow: Callable[[], UnitOfWork], batch: Sequence[Pending]
) -> list[Outcome]:
    """Apply each pending event once; return one outcome per event, in order."""
    if not batch:
        return []
    try:
        return list(await _transaction(consumer, uow, batch))
    except Exception as exc:
        if len(batch) == 1:
            return [exc]
    outcomes: list[Outcome] = []
    for pending in batch:
        outcomes += await apply_batch(consumer, uow, [pending])
    return outcomes


async def _transaction(
    consumer: str, uow_factory: Callable[[], UnitOfWork], batch: Sequence[Pending]
) -> list[bool]:
    results = []
    async with uow_factory() as uow:
        unclaimed = await uow.claim_many(consumer, [pending.event for pending in batch])
        for pending in batch:
            claimed = pending.event.event_id in unclaimed
            unclaimed.discard(pending.event.event_id)  # a twin in the same batch is a duplicate
            if claimed:
                with trace.use_span(pending.span, end_on_exit=False):
                    await pending.handler(pending.event, uow)
            results.append(claimed)
        await uow.commit()
    return results
