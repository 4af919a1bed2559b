"""Cutting usage intervals at hour boundaries, in whole numbers that add up exactly."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

from compgrid_events.provisioner import InstanceUsage
from compgrid_metering.adapters.counters import Counters, Tick, epoch
from compgrid_metering.domain.hours import hour_of, micros, pieces

START = datetime(2026, 11, 29, 9, 40, 12, 345678, tzinfo=UTC)


def usage(start: datetime, end: datetime, **extra: object) -> InstanceUsage:
    values: dict[str, object] = {
        "instance_id": uuid.uuid4(),
        "project_id": uuid.uuid4(),
        "budget_code_id": uuid.uuid4(),
        "started_at": start,
        "ended_at": end,
        "vcpus": 3,
        "memory_mib": 1536,
        "cpu_time_ns": 0,
        **extra,
    }
    return InstanceUsage.model_validate(values)


def test_an_interval_inside_one_hour_is_one_piece() -> None:
    [piece] = pieces(usage(START, START + timedelta(minutes=5), cpu_time_ns=42, gpus={"a100": 2}))
    assert piece.hour == datetime(2026, 11, 29, 9, tzinfo=UTC)
    assert piece.running_us == 300_000_000
    assert piece.vcpu_us == 3 * 300_000_000
    assert piece.memory_mib_us == 1536 * 300_000_000
    assert piece.gpu_us == {"a100": 2 * 300_000_000}
    assert piece.cpu_ns == 42


def test_an_interval_is_cut_at_every_hour_and_the_pieces_add_up_exactly() -> None:
    end = START + timedelta(hours=2, minutes=33, microseconds=1)
    sample = usage(START, end, cpu_time_ns=10**13 + 7)
    found = pieces(sample)
    assert [p.hour.hour for p in found] == [9, 10, 11, 12]
    assert found[0].running_us == micros(datetime(2026, 11, 29, 10, tzinfo=UTC) - START)
    assert found[1].running_us == found[2].running_us == 3_600_000_000
    assert sum(p.running_us for p in found) == micros(end - START)
    assert sum(p.cpu_ns for p in found) == 10**13 + 7
    # CPU time follows the length of each piece (the last takes the remainder)
    assert found[1].cpu_ns == (10**13 + 7) * 3_600_000_000 // micros(end - START)


def test_an_interval_ending_on_the_hour_does_not_reach_into_the_next() -> None:
    hour = datetime(2026, 11, 29, 10, tzinfo=UTC)
    found = pieces(usage(hour - timedelta(minutes=1), hour))
    assert [p.hour for p in found] == [hour - timedelta(hours=1)]


@pytest.mark.parametrize("cpu", [0, 5])
def test_an_empty_interval_counts_nothing(cpu: int) -> None:
    assert pieces(usage(START, START, cpu_time_ns=cpu)) == []


def test_the_hour_of_a_moment_is_its_utc_hour() -> None:
    assert hour_of(START) == datetime(2026, 11, 29, 9, tzinfo=UTC)
    assert micros(timedelta(days=1, microseconds=3)) == 86_400_000_003


def test_the_hot_path_spells_keys_as_key_builds_them() -> None:
    counters = Counters(Redis(), "P:", 60)
    [piece] = pieces(usage(START, START + timedelta(seconds=1)))
    ops = counters._ops([Tick("t", [piece])], now_ms=1)
    hour = epoch(piece.hour)
    for key in (
        counters.key("i", hour, piece.instance_id),
        counters.key("p", hour, piece.project_id),
        counters.key("b", hour, piece.budget_code_id),
        counters.key("h", hour),
        counters.key("ih", piece.instance_id),
        counters.key("owner"),
        counters.key("touched"),
    ):
        assert key in ops
