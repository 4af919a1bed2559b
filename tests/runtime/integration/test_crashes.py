"""Exactly-once delivery across SIGKILLs of the publisher and of the consumer.

The sample handler's effect is *not* idempotent on its own (an insert without a unique key and
a counter increment), so these tests fail if the outbox or the inbox is taken away.
"""

from __future__ import annotations

import signal

import pytest
from nats.aio.client import Client as NatsClient

from tests.runtime.integration.conftest import Sample
from tests.runtime.integration.waiting import wait_until
from tests.runtime.sample_app import stream_for

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.slow]

KILLED = -signal.SIGKILL


async def assert_applied_exactly(sample: Sample, count: int) -> None:
    async def all_applied() -> bool:
        return await sample.count("applied") >= count

    await wait_until(all_applied, 60, f"{count} applied events")
    assert await sample.count("applied") == count
    assert await sample.scalar("SELECT count(DISTINCT event_id) FROM {s}.applied") == count
    assert await sample.scalar("SELECT n FROM {s}.tally") == count


def stop(process) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(30)


async def test_publisher_killed_between_commit_and_publish_loses_no_event(sample: Sample) -> None:
    first = sample.spawn("publish", "--count", "40", fault="outbox.before_publish", after=2)
    assert first.wait(60) == KILLED
    committed = await sample.count("note")
    unpublished = await sample.scalar("SELECT count(*) FROM {s}.outbox WHERE published_at IS NULL")
    assert unpublished >= 1, "the kill came after the commit and before the publish"
    consumer = sample.spawn("consume")

    second = sample.spawn("publish", "--first", str(committed), "--count", "40")
    assert second.wait(60) == 0
    try:
        await assert_applied_exactly(sample, 40)
    finally:
        assert stop(consumer) == 0


async def test_relay_killed_after_publish_before_marking_publishes_no_twin(
    sample: Sample, nc: NatsClient
) -> None:
    first = sample.spawn("publish", "--count", "30", fault="outbox.after_publish")
    assert first.wait(60) == KILLED
    assert await sample.scalar("SELECT count(*) FROM {s}.outbox WHERE published_at IS NULL") >= 1
    committed = await sample.count("note")

    second = sample.spawn("publish", "--first", str(committed), "--count", "30")
    assert second.wait(60) == 0
    assert await sample.scalar("SELECT count(*) FROM {s}.outbox WHERE published_at IS NULL") == 0
    info = await nc.jetstream().stream_info(stream_for(sample.run).name)
    assert info.state.messages == 30, "JetStream must drop re-published events by Nats-Msg-Id"

    consumer = sample.spawn("consume")
    try:
        await assert_applied_exactly(sample, 30)
    finally:
        assert stop(consumer) == 0


async def test_consumer_killed_mid_batch_applies_every_event_once(sample: Sample) -> None:
    publisher = sample.spawn("publish", "--count", "60")
    assert publisher.wait(60) == 0

    doomed = sample.spawn("consume", fault="inbox.before_ack", after=10)
    assert doomed.wait(60) == KILLED
    applied_before_restart = await sample.count("applied")
    assert 11 <= applied_before_restart < 60

    consumer = sample.spawn("consume")
    try:
        await assert_applied_exactly(sample, 60)
    finally:
        assert stop(consumer) == 0
