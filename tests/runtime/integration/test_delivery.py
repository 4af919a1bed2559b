"""Duplicates, poison messages, retries, dead letters and tracing through the shared runtime."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NatsClient
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from compgrid_events.streams import DEADLETTER
from compgrid_runtime.app import ServiceApp
from compgrid_runtime.deadletter import (
    DELIVERIES_HEADER,
    REASON_HEADER,
    SUBJECT_HEADER,
    deadletter_subject,
)
from compgrid_runtime.retry import PermanentError, RetryPolicy
from compgrid_runtime.streams import ensure_streams
from compgrid_runtime.tracing import add_span_processor, current_trace_id, tracer
from compgrid_runtime.uow import UnitOfWork
from tests.runtime.integration.conftest import Sample
from tests.runtime.integration.waiting import wait_until
from tests.runtime.sample_app import NoteAdded, add_note, counting_handler, note_consumer

pytestmark = [pytest.mark.postgres, pytest.mark.nats]


@pytest.fixture
async def app(sample: Sample, nc: NatsClient) -> AsyncIterator[ServiceApp]:
    await ensure_streams(nc.jetstream(), [DEADLETTER])
    service = sample.app()
    yield service
    if getattr(service, "health", None) is not None:
        await service.stop()


async def applied(sample: Sample, count: int) -> None:
    async def enough() -> bool:
        return await sample.count("applied") >= count

    await wait_until(enough, 20, f"{count} applied")


async def dead_letters(nc: NatsClient, durable: str, expected: int) -> list:
    sub = await nc.jetstream().pull_subscribe(
        deadletter_subject("sample", durable), stream="DEADLETTER"
    )
    messages: list = []
    for _ in range(40):
        with contextlib.suppress(TimeoutError):
            messages += await sub.fetch(expected - len(messages), timeout=0.5)
        if len(messages) >= expected:
            break
    await sub.unsubscribe()
    return messages


async def test_duplicate_deliveries_are_applied_once(
    sample: Sample, app: ServiceApp, nc: NatsClient
) -> None:
    spec = note_consumer(sample.run)
    app.consumers.add(spec, {NoteAdded: counting_handler(app, sample.run, spec.durable("sample"))})
    await app.start()
    event = NoteAdded(run=sample.run, note_id=1, body="twice")
    js = nc.jetstream()
    first = await js.publish(
        event.subject, event.to_json(), headers={"Nats-Msg-Id": str(event.event_id)}
    )
    again = await js.publish(
        event.subject, event.to_json(), headers={"Nats-Msg-Id": str(event.event_id)}
    )
    assert again.duplicate
    assert again.seq == first.seq
    # Past the duplicate window the stream accepts a twin; the inbox must still drop it.
    await js.publish(
        event.subject, event.to_json(), headers={"Nats-Msg-Id": f"late-{event.event_id}"}
    )
    await add_note(app, sample.run, 2)
    await applied(sample, 2)
    await wait_until(lambda: _consumer_idle(nc, sample, spec.durable("sample")), 10, "all acked")
    assert await sample.count("applied") == 2
    assert await sample.scalar("SELECT n FROM {s}.tally") == 2


async def _consumer_idle(nc: NatsClient, sample: Sample, durable: str) -> bool:
    info = await nc.jetstream().consumer_info(f"SAMPLE_{sample.run}", durable)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_malformed_messages_are_dead_lettered_and_the_next_is_processed(
    sample: Sample, app: ServiceApp, nc: NatsClient
) -> None:
    spec = note_consumer(sample.run)
    durable = spec.durable("sample")
    app.consumers.add(spec, {NoteAdded: counting_handler(app, sample.run, durable)})
    await app.start()
    subject = NoteAdded.subject_for(run=sample.run)
    good = NoteAdded(run=sample.run, note_id=7, body="good").model_dump(mode="json")
    poison = [
        b"{not json",
        json.dumps({**good, "unexpected": 1}).encode(),
        json.dumps({**good, "note_id": "seven"}).encode(),
        json.dumps({**good, "occurred_at": "2026-01-01T00:00:00"}).encode(),
    ]
    js = nc.jetstream()
    for body in poison:
        await js.publish(subject, body)
    await add_note(app, sample.run, 8)
    await applied(sample, 1)
    letters = await dead_letters(nc, durable, len(poison))
    assert sorted(m.data for m in letters) == sorted(poison)
    assert {m.headers[REASON_HEADER] for m in letters} == {"malformed"}
    assert {m.headers[SUBJECT_HEADER] for m in letters} == {subject}
    assert await sample.count("applied") == 1


async def test_transient_failures_are_retried_then_applied_once(
    sample: Sample, app: ServiceApp
) -> None:
    spec = note_consumer(sample.run, retry=RetryPolicy(max_deliver=4, backoff_base_s=0.05))
    inner = counting_handler(app, sample.run, spec.durable("sample"))
    attempts: list[int] = []

    async def flaky(event: NoteAdded, uow: UnitOfWork) -> None:
        attempts.append(event.note_id)
        await inner(event, uow)  # the effect is written and then rolled back
        if len(attempts) < 3:
            raise ConnectionError("database went away")

    app.consumers.add(spec, {NoteAdded: flaky})
    await app.start()
    await add_note(app, sample.run, 1)
    await applied(sample, 1)
    assert attempts == [1, 1, 1]
    assert await sample.scalar("SELECT n FROM {s}.tally") == 1


async def test_message_failing_every_delivery_is_dead_lettered_and_the_next_is_processed(
    sample: Sample, app: ServiceApp, nc: NatsClient
) -> None:
    spec = note_consumer(sample.run, retry=RetryPolicy(max_deliver=3, backoff_base_s=0.05))
    durable = spec.durable("sample")
    inner = counting_handler(app, sample.run, durable)
    deliveries: list[int] = []

    async def poisoned_by_content(event: NoteAdded, uow: UnitOfWork) -> None:
        if event.note_id == 13:
            deliveries.append(event.note_id)
            raise RuntimeError("unlucky note")
        if event.note_id == 14:
            raise PermanentError("this note can never be applied")
        await inner(event, uow)

    app.consumers.add(spec, {NoteAdded: poisoned_by_content})
    await app.start()
    for note_id in (13, 14, 15):
        await add_note(app, sample.run, note_id)
    await applied(sample, 1)
    letters = await dead_letters(nc, durable, 2)
    reasons = {json.loads(m.data)["note_id"]: m.headers[REASON_HEADER] for m in letters}
    assert reasons == {13: "max_deliver", 14: "rejected"}
    delivered = {json.loads(m.data)["note_id"]: m.headers[DELIVERIES_HEADER] for m in letters}
    assert delivered[13] == "3", "given up on the third delivery"
    # Each delivery runs the handler once, or twice when the note came in one fetch with the
    # others: a failing batch is rolled back and applied again one event at a time.
    assert 3 <= len(deliveries) <= 6
    assert await sample.scalar("SELECT note_id FROM {s}.applied") == 15


async def test_one_trace_spans_publisher_and_consumer(sample: Sample, app: ServiceApp) -> None:
    exporter = InMemorySpanExporter()
    add_span_processor(SimpleSpanProcessor(exporter))
    spec = note_consumer(sample.run)
    inner = counting_handler(app, sample.run, spec.durable("sample"))
    seen: list[str | None] = []

    async def traced(event: NoteAdded, uow: UnitOfWork) -> None:
        seen.append(current_trace_id())
        await inner(event, uow)

    app.consumers.add(spec, {NoteAdded: traced})
    await app.start()
    with tracer.start_as_current_span("POST /api/v1/notes") as root:
        await add_note(app, sample.run, 1)
        trace_id = format(root.get_span_context().trace_id, "032x")
    await applied(sample, 1)
    assert seen == [trace_id]
    consumer_spans = [s for s in exporter.get_finished_spans() if s.name.endswith("process")]
    assert any(
        s.parent is not None and format(s.context.trace_id, "032x") == trace_id
        for s in consumer_spans
    )
