"""A small service built only from the shared runtime, used to prove the backbone.

It owns a ``sample_<run>`` schema with ``note`` (the state change a publisher makes),
``applied`` (one row per handler run, deliberately *not* unique) and ``tally`` (a counter the
handler increments). Only the outbox and the inbox stand between it and lost or doubled events.

Run as a process: ``python -m tests.runtime.sample_app publish|consume --run RUN ...``.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic_settings import SettingsConfigDict
from sqlalchemy import Column, Integer, MetaData, String, Table, Uuid, insert, text

from compgrid_events import Event, StreamSpec
from compgrid_events.base import RoutingToken
from compgrid_runtime.app import ServiceApp
from compgrid_runtime.consumers import ConsumerSpec
from compgrid_runtime.db import make_metadata
from compgrid_runtime.retry import RetryPolicy
from compgrid_runtime.settings import ServiceSettings
from compgrid_runtime.uow import UnitOfWork

SAMPLE_DOC_STREAM = StreamSpec("SAMPLE", ("sample.>",), "sample", "backbone test stream")


class NoteAdded(Event):
    """A note was written (test-only contract)."""

    subject_template = "sample.{run}.note.added"
    stream = SAMPLE_DOC_STREAM
    run: RoutingToken
    note_id: int
    body: str

    @property
    def aggregate_id(self) -> str:
        return f"{self.run}.{self.note_id % 7}"


class SampleSettings(ServiceSettings):
    """Settings of the sample service."""

    model_config = SettingsConfigDict(env_prefix="COMPGRID_SAMPLE_", extra="ignore")
    service_name = "sample"


def stream_for(run: str) -> StreamSpec:
    """Return the sample stream of one test."""
    return StreamSpec(f"SAMPLE_{run}", (f"sample.{run}.>",), "sample", "backbone test stream")


def sample_metadata(run: str) -> MetaData:
    """Return the sample schema's tables (with outbox and inbox)."""
    metadata = make_metadata(f"sample_{run}")
    Table("note", metadata, Column("id", Integer, primary_key=True), Column("body", String(200)))
    Table(
        "applied",
        metadata,
        Column("seq", Integer, primary_key=True, autoincrement=True),
        Column("consumer", String(100)),
        Column("event_id", Uuid),
        Column("note_id", Integer),
    )
    Table(
        "tally",
        metadata,
        Column("consumer", String(100), primary_key=True),
        Column("n", Integer, nullable=False),
    )
    return metadata


def build_app(run: str, settings: SampleSettings | None = None) -> ServiceApp:
    """Return the sample service process for one test run."""
    return ServiceApp(
        settings or SampleSettings(), sample_metadata(run), owned_streams=(stream_for(run),)
    )


async def add_note(app: ServiceApp, run: str, note_id: int) -> NoteAdded:
    """Write one note and its event in one transaction."""
    event = NoteAdded(run=run, note_id=note_id, body=f"note {note_id}")
    async with app.unit_of_work() as uow:
        await uow.session.execute(
            insert(app.metadata.tables[f"sample_{run}.note"]), {"id": note_id, "body": event.body}
        )
        uow.emit(event)
        await uow.commit()
    return event


def counting_handler(app: ServiceApp, run: str, consumer: str) -> Callable[..., Awaitable[None]]:
    """Return a handler whose effect is not idempotent by itself (insert + increment)."""
    schema = f"sample_{run}"

    async def on_note_added(event: NoteAdded, uow: UnitOfWork) -> None:
        await uow.session.execute(
            text(
                f'INSERT INTO "{schema}".applied (consumer, event_id, note_id) VALUES (:c, :e, :n)'
            ),
            {"c": consumer, "e": event.event_id, "n": event.note_id},
        )
        await uow.session.execute(
            text(
                f'INSERT INTO "{schema}".tally (consumer, n) VALUES (:c, 1) '
                "ON CONFLICT (consumer) DO UPDATE SET n = tally.n + 1"
            ),
            {"c": consumer},
        )

    return on_note_added


def note_consumer(run: str, name: str | None = None, **overrides: object) -> ConsumerSpec:
    """Return the consumer declaration used by the tests."""
    options: dict[str, Any] = {
        "ack_wait_s": 2.0,
        "batch_size": 16,
        "retry": RetryPolicy(max_deliver=3, backoff_base_s=0.05),
    }
    options.update(overrides)
    return ConsumerSpec(
        name or f"notes-{run}", stream_for(run), NoteAdded.subject_for(run=run), **options
    )


async def _publish(run: str, first: int, count: int) -> None:
    app = build_app(run)
    await app.start()
    for note_id in range(first, count):
        await add_note(app, run, note_id)
    await app.stop()


async def _consume(run: str, name: str | None) -> None:
    app = build_app(run)
    durable = note_consumer(run, name).durable("sample")
    app.consumers.add(note_consumer(run, name), {NoteAdded: counting_handler(app, run, durable)})
    await app.run()


def main() -> None:
    """Run the sample publisher or consumer."""
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["publish", "consume"])
    parser.add_argument("--run", required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    if args.mode == "publish":
        asyncio.run(_publish(args.run, args.first, args.count))
    else:
        asyncio.run(_consume(args.run, args.name))


if __name__ == "__main__":
    main()
