"""A consumer with ``concurrency``: messages side by side, in order per key, each applied once."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NatsClient

from compgrid_events.streams import DEADLETTER
from compgrid_runtime.app import ServiceApp
from compgrid_runtime.retry import RetryPolicy
from compgrid_runtime.streams import ensure_streams
from compgrid_runtime.uow import UnitOfWork
from tests.runtime.integration.conftest import Sample
from tests.runtime.integration.waiting import wait_until
from tests.runtime.sample_app import NoteAdded, build_app, counting_handler, note_consumer

pytestmark = [pytest.mark.postgres, pytest.mark.nats]

HANDLER_S = 0.4


@pytest.fixture
async def app(sample: Sample, nc: NatsClient) -> AsyncIterator[ServiceApp]:
    await ensure_streams(nc.jetstream(), [DEADLETTER])
    # a connection for each message handled at once (the tests use up to 8), whatever small
    # pool the run gives other processes
    service = build_app(sample.run, sample.settings.model_copy(update={"db_pool_size": 8}))
    yield service
    if getattr(service, "health", None) is not None:
        await service.stop()


class Timeline:
    """When each note's handler ran, and how many ran at once."""

    def __init__(self) -> None:
        self.spans: dict[int, tuple[float, float]] = {}
        self.now = 0
        self.most = 0

    async def slow(self, note_id: int) -> None:
        self.now += 1
        self.most = max(self.most, self.now)
        began = time.monotonic()
        try:
            await asyncio.sleep(HANDLER_S)
        finally:
            self.now -= 1
            self.spans[note_id] = (began, time.monotonic())


async def _publish(nc: NatsClient, sample: Sample, note_ids: range) -> None:
    js = nc.jetstream()
    for note_id in note_ids:
        event = NoteAdded(run=sample.run, note_id=note_id, body=f"note {note_id}")
        await js.publish(
            event.subject, event.to_json(), headers={"Nats-Msg-Id": str(event.event_id)}
        )


async def _all_applied(sample: Sample, count: int, timeout_s: float = 20) -> None:
    async def done() -> bool:
        return await sample.count("applied") >= count

    await wait_until(done, timeout_s, f"{count} notes applied")


async def test_messages_of_different_keys_run_side_by_side_up_to_the_limit(
    sample: Sample, app: ServiceApp, nc: NatsClient
) -> None:
    spec = note_consumer(sample.run, concurrency=4, key=lambda e: e.note_id)
    inner = counting_handler(app, sample.run, spec.durable("sample"))
    timeline = Timeline()

    async def handler(event: NoteAdded, uow: UnitOfWork) -> None:
        await timeline.slow(event.note_id)
        await inner(event, uow)

    app.consumers.add(spec, {NoteAdded: handler})
    await app.start()
    started = time.monotonic()
    await _publish(nc, sample, range(12))
    await _all_applied(sample, 12)
    elapsed = time.monotonic() - started
    assert timeline.most == 4, "never more than the limit at once, and the limit is used"
    # one after another would take 12 x 0.4 s; four at a time, about 3 x 0.4 s
    assert elapsed < 12 * HANDLER_S * 0.6, elapsed
    assert await sample.scalar("SELECT n FROM {s}.tally") == 12


async def test_messages_of_one_key_run_one_after_another_in_order(
    sample: Sample, app: ServiceApp, nc: NatsClient
) -> None:
    spec = note_consumer(sample.run, concurrency=8, key=lambda e: e.note_id % 2)
    inner = counting_handler(app, sample.run, spec.durable("sample"))
    timeline = Timeline()

    async def handler(event: NoteAdded, uow: UnitOfWork) -> None:
        await timeline.slow(event.note_id)
        await inner(event, uow)

    app.consumers.add(spec, {NoteAdded: handler})
    await app.start()
    await _publish(nc, sample, range(8))
    await _all_applied(sample, 8)
    for parity in (0, 1):
        runs = [timeline.spans[n] for n in range(parity, 8, 2)]
        for (_, ended), (began, _) in itertools.pairwise(runs):
            assert began >= ended, "a key's next message started before the one before it ended"
    assert timeline.most == 2, "the two keys ran side by side"
    order = await sample.scalar(
        "SELECT string_agg(note_id::text, ',' ORDER BY seq) FROM {s}.applied WHERE note_id % 2 = 0"
    )
    assert order == "0,2,4,6"


async def test_a_failing_message_is_retried_without_holding_up_other_keys(
    sample: Sample, app: ServiceApp, nc: NatsClient
) -> None:
    spec = note_consumer(
        sample.run,
        concurrency=4,
        key=lambda e: e.note_id,
        retry=RetryPolicy(max_deliver=5, backoff_base_s=0.5),
    )
    inner = counting_handler(app, sample.run, spec.durable("sample"))
    attempts: list[int] = []
    applied_at: dict[int, float] = {}

    async def handler(event: NoteAdded, uow: UnitOfWork) -> None:
        attempts.append(event.note_id)
        await inner(event, uow)
        if event.note_id == 0 and attempts.count(0) < 3:
            raise ConnectionError("host went away")
        applied_at[event.note_id] = time.monotonic()

    app.consumers.add(spec, {NoteAdded: handler})
    await app.start()
    await _publish(nc, sample, range(6))
    await _all_applied(sample, 6)
    assert attempts.count(0) == 3
    assert all(attempts.count(n) == 1 for n in range(1, 6))
    assert max(applied_at[n] for n in range(1, 6)) < applied_at[0], "others did not wait"
    assert await sample.scalar("SELECT n FROM {s}.tally") == 6
