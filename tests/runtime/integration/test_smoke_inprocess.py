"""Outbox → JetStream → inbox inside one process: the happy path."""

from __future__ import annotations

import asyncio

import pytest

from tests.runtime.integration.conftest import Sample
from tests.runtime.integration.waiting import wait_until
from tests.runtime.sample_app import NoteAdded, add_note, counting_handler, note_consumer

pytestmark = [pytest.mark.postgres, pytest.mark.nats]


async def test_every_committed_event_is_applied_once(sample: Sample) -> None:
    app = sample.app()
    durable = note_consumer(sample.run).durable("sample")
    app.consumers.add(
        note_consumer(sample.run), {NoteAdded: counting_handler(app, sample.run, durable)}
    )
    await app.start()
    try:
        for note_id in range(50):
            await add_note(app, sample.run, note_id)

        async def all_applied() -> bool:
            return await sample.count("applied") >= 50

        await wait_until(all_applied)
        await asyncio.sleep(0.3)
    finally:
        await app.stop()
    assert await sample.count("applied") == 50
    assert await sample.scalar("SELECT n FROM {s}.tally") == 50
    assert await sample.scalar("SELECT count(*) FROM {s}.outbox WHERE published_at IS NULL") == 0
