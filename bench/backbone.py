"""Events per second through outbox → JetStream → inbox, against a raw nats-py loop.

Ours: events committed in the outbox (16 writers, one event per transaction; that rate is
reported on its own as ``outbox_write_events_s`` because it is bound by Postgres commit
latency, which a service pays for its state change anyway). Then the clock starts: the relay
publishes them with Nats-Msg-Id and a durable pull consumer claims each id in the inbox in a
transaction and acks it. The clock stops when the inbox holds every event.

Baseline, same run, same NATS server: raw nats-py JetStream publish of the same payloads (256
in flight, like the relay's batch) while a pull consumer fetches 64 at a time and acks each.
No database, no validation: the cost of the bus alone.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import nats
from nats.js.api import StreamConfig
from sqlalchemy import text

from bench.common import bench_servers, report
from compgrid_runtime.app import ServiceApp
from compgrid_runtime.db import create_engine, ensure_schema
from compgrid_runtime.uow import UnitOfWork
from tests.runtime.sample_app import (
    NoteAdded,
    SampleSettings,
    build_app,
    note_consumer,
    sample_metadata,
)

EVENTS = int(os.environ.get("COMPGRID_BENCH_EVENTS", "20000"))
WRITERS = 16
IN_FLIGHT = 256


async def raw_baseline(nats_url: str, count: int) -> float:
    """Return raw publish + pull-fetch + ack events per second."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    run = uuid.uuid4().hex[:8]
    subject = f"raw.{run}.note"
    await js.add_stream(StreamConfig(name=f"RAW_{run}", subjects=[f"raw.{run}.>"]))
    payload = NoteAdded(run=run, note_id=1, body="note 1").to_json()
    sub = await js.pull_subscribe(subject, durable="raw", stream=f"RAW_{run}")

    async def produce() -> None:
        for start in range(0, count, IN_FLIGHT):
            await asyncio.gather(
                *(
                    js.publish(subject, payload, headers={"Nats-Msg-Id": f"{run}-{i}"})
                    for i in range(start, min(count, start + IN_FLIGHT))
                )
            )

    async def consume() -> None:
        acked = 0
        while acked < count:
            try:
                messages = await sub.fetch(64, timeout=1)
            except TimeoutError:
                continue
            for message in messages:
                await message.ack()
            acked += len(messages)

    started = time.perf_counter()
    await asyncio.gather(produce(), consume())
    elapsed = time.perf_counter() - started
    await nc.close()
    return count / elapsed


async def prepare_schema(database_url: str, run: str) -> None:
    """Create the sample schema for this run."""
    engine = create_engine(database_url)
    await ensure_schema(engine, f"sample_{run}")
    async with engine.begin() as conn:
        await conn.run_sync(sample_metadata(run).create_all)
    await engine.dispose()


async def write_outbox(app: ServiceApp, run: str, count: int) -> float:
    """Commit ``count`` events, one per transaction, from concurrent writers; return events/s."""

    async def write(worker: int) -> None:
        for note_id in range(worker, count, WRITERS):
            async with app.unit_of_work() as uow:
                uow.emit(NoteAdded(run=run, note_id=note_id, body=f"note {note_id}"))
                await uow.commit()

    started = time.perf_counter()
    await asyncio.gather(*(write(w) for w in range(WRITERS)))
    return count / (time.perf_counter() - started)


async def count_rows(app: ServiceApp, sql: str) -> int:
    """Return the integer one query yields."""
    async with app.engine.connect() as conn:
        return int((await conn.execute(text(sql))).scalar() or 0)


async def ours(database_url: str, nats_url: str, count: int) -> dict[str, float]:
    """Measure outbox → relay → JetStream → inbox → ack, and the outbox write rate."""
    run = uuid.uuid4().hex[:8]
    await prepare_schema(database_url, run)
    settings = SampleSettings(
        database_url=database_url, nats_url=nats_url, db_pool_size=16, log_level="WARNING"
    )
    app = build_app(run, settings)
    spec = note_consumer(run, batch_size=64, ack_wait_s=30.0)
    app.consumers.add(spec, {NoteAdded: apply_nothing})
    inbox = f'SELECT count(*) FROM "sample_{run}".inbox'
    write_rate = await write_outbox(app, run, count)
    started = time.perf_counter()
    await app.start()
    while await count_rows(app, inbox) < count:
        await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - started
    await asyncio.sleep(0.5)  # let stragglers show up if anything were delivered twice
    applied = await count_rows(app, inbox)
    stream = await app.js.stream_info(f"SAMPLE_{run}")
    await app.stop()
    return {
        "value": count / elapsed,
        "write": write_rate,
        "applied": applied,
        "published": stream.state.messages,
    }


async def apply_nothing(event: NoteAdded, uow: UnitOfWork) -> None:
    """The bench measures the backbone: the inbox claim is the only effect."""


async def main() -> None:
    """Run both measurements and print the JSON line."""
    async with bench_servers() as (database_url, nats_url):
        baseline = await raw_baseline(nats_url, EVENTS)
        result = await ours(database_url, nats_url, EVENTS)
    report(
        "backbone",
        result["value"],
        "events/s",
        baseline,
        result["value"] / baseline,
        events=EVENTS,
        published=result["published"],
        applied=result["applied"],
        lost=EVENTS - result["applied"],
        outbox_write_events_s=round(result["write"], 1),
        writers=WRITERS,
    )


if __name__ == "__main__":
    asyncio.run(main())
