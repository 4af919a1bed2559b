"""The outbox relay: publishes committed outbox rows to JetStream, at least once, in order.

Policy:
- one relay publishes per schema at a time (a transaction-scoped advisory lock), so two
  processes of a service never interleave an aggregate's events;
- rows of one aggregate are published one after another, each waiting for its ack; different
  aggregates are published concurrently; when a publish fails, that aggregate's later rows wait
  for the next pass, so an aggregate's order on the stream is its commit order;
- every message carries ``Nats-Msg-Id = event_id``: a row re-published after a crash between
  publish and marking is dropped by JetStream's duplicate window.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from typing import Any

from nats.js import JetStreamContext
from sqlalchemy import MetaData, Row, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from compgrid_runtime.faults import fault_point
from compgrid_runtime.logs import get_logger
from compgrid_runtime.messaging_tables import outbox_table
from compgrid_runtime.metrics import OUTBOX_PENDING, OUTBOX_PUBLISHED

log = get_logger(__name__)

EVENT_TYPE_HEADER = "compgrid-event-type"
MSG_ID_HEADER = "Nats-Msg-Id"


class OutboxRelay:
    """Moves outbox rows of one schema to JetStream."""

    def __init__(
        self,
        engine: AsyncEngine,
        metadata: MetaData,
        js: JetStreamContext,
        *,
        batch_size: int = 256,
        poll_interval_s: float = 0.5,
        publish_timeout_s: float = 5.0,
    ) -> None:
        self._engine = engine
        self._table = outbox_table(metadata)
        self._schema = str(metadata.schema)
        self._js = js
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._publish_timeout_s = publish_timeout_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def notify(self) -> None:
        """Wake the relay now (called after a unit of work commits)."""
        self._wake.set()

    def start(self) -> None:
        """Run the relay loop in the background."""
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self._schema}")

    async def stop(self) -> None:
        """Stop the loop and publish what is left."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def flush(self) -> int:
        """Publish until nothing is left that can be published now; return the count."""
        total = 0
        while (published := await self.publish_batch()) > 0:
            total += published
        return total

    async def _run(self) -> None:
        while True:
            try:
                published = await self.publish_batch()
            except Exception as exc:
                log.warning("outbox relay pass failed", schema=self._schema, error=repr(exc))
                published = 0
                await asyncio.sleep(self._poll_interval_s)
            if published == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll_interval_s)
                self._wake.clear()

    async def publish_batch(self) -> int:
        """Publish one batch of unpublished rows; return how many were published."""
        async with self._engine.begin() as conn:
            if not await self._lead(conn):
                return 0
            rows = list((await conn.execute(self._pending())).all())
            OUTBOX_PENDING.labels(self._schema).set(len(rows))
            if not rows:
                return 0
            fault_point("outbox.before_publish")
            published = await self._publish_rows(rows)
            fault_point("outbox.after_publish")
            if published:
                done = update(self._table).where(self._table.c.id.in_(published))
                await conn.execute(done.values(published_at=func.now()))
        OUTBOX_PUBLISHED.labels(self._schema).inc(len(published))
        return len(published)

    async def _lead(self, conn: AsyncConnection) -> bool:
        key = f"compgrid.outbox.{self._schema}"
        result = await conn.execute(
            text("SELECT pg_try_advisory_xact_lock(hashtext(:k))"), {"k": key}
        )
        return bool(result.scalar())

    def _pending(self) -> Any:
        table = self._table
        return (
            select(
                table.c.id,
                table.c.event_id,
                table.c.subject,
                table.c.event_type,
                table.c.aggregate_id,
                table.c.payload,
                table.c.headers,
            )
            .where(table.c.published_at.is_(None))
            .order_by(table.c.id)
            .limit(self._batch_size)
        )

    async def _publish_rows(self, rows: list[Row[Any]]) -> list[int]:
        chains: dict[str, list[Row[Any]]] = defaultdict(list)
        for row in rows:
            chains[row.aggregate_id].append(row)
        results = await asyncio.gather(*(self._publish_chain(c) for c in chains.values()))
        return [row_id for chain in results for row_id in chain]

    async def _publish_chain(self, chain: list[Row[Any]]) -> list[int]:
        done: list[int] = []
        for row in chain:
            headers = {
                **row.headers,
                MSG_ID_HEADER: str(row.event_id),
                EVENT_TYPE_HEADER: row.event_type,
            }
            try:
                await self._js.publish(
                    row.subject, row.payload, timeout=self._publish_timeout_s, headers=headers
                )
            except Exception as exc:
                log.warning(
                    "outbox publish failed; retrying later",
                    subject=row.subject,
                    event_id=str(row.event_id),
                    error=repr(exc),
                )
                break
            done.append(row.id)
        return done
