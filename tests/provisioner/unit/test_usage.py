"""Usage intervals: CPU time between counter readings, and deterministic sampling-round ids."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from compgrid_provisioner.domain.usage import Observation, cpu_used, tick_id

S = 1_000_000_000  # nanoseconds per second
T0 = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


# --- cpu_used ---------------------------------------------------------------------------------


def test_cpu_used_is_the_counter_delta() -> None:
    assert cpu_used(10 * S, 25 * S, seconds=60.0, vcpus=1) == 15 * S


def test_cpu_used_of_an_unchanged_counter_is_zero() -> None:
    assert cpu_used(42 * S, 42 * S, seconds=60.0, vcpus=4) == 0


def test_cpu_used_after_a_counter_reset_counts_from_zero() -> None:
    # The guest process restarted: the counter went from 500 s down to 7 s.
    assert cpu_used(500 * S, 7 * S, seconds=60.0, vcpus=2) == 7 * S


def test_cpu_used_is_clamped_to_what_the_vcpus_could_use_in_the_interval() -> None:
    assert cpu_used(0, 10_000 * S, seconds=60.0, vcpus=2) == 120 * S


def test_cpu_used_exactly_at_the_ceiling_is_kept() -> None:
    assert cpu_used(S, S + 240 * S, seconds=60.0, vcpus=4) == 240 * S


def test_cpu_used_after_a_reset_is_clamped_too() -> None:
    assert cpu_used(900 * S, 500 * S, seconds=10.0, vcpus=1) == 10 * S


def test_cpu_used_scales_the_ceiling_with_fractional_seconds() -> None:
    assert cpu_used(0, 100 * S, seconds=1.5, vcpus=2) == 3 * S


@pytest.mark.parametrize("seconds", [0.0, -5.0])
def test_cpu_used_in_an_empty_or_backwards_interval_is_zero(seconds: float) -> None:
    assert cpu_used(0, 30 * S, seconds=seconds, vcpus=8) == 0


def test_cpu_used_with_no_vcpus_is_zero() -> None:
    assert cpu_used(0, 30 * S, seconds=60.0, vcpus=0) == 0


@pytest.mark.parametrize(
    ("previous", "current", "seconds", "vcpus"),
    [(0, -1, 60.0, 1), (5, -100, 60.0, 4), (0, 0, -1.0, 1), (-10, -20, 30.0, 2)],
)
def test_cpu_used_is_never_negative(
    previous: int, current: int, seconds: float, vcpus: int
) -> None:
    assert cpu_used(previous, current, seconds, vcpus) >= 0


def test_cpu_used_returns_an_int() -> None:
    assert type(cpu_used(0, 3 * S, seconds=0.5, vcpus=3)) is int


# --- tick_id ----------------------------------------------------------------------------------

A = Observation(UUID("00000000-0000-4000-8000-00000000000a"), T0, T0 + timedelta(minutes=1), 5 * S)
B = Observation(UUID("00000000-0000-4000-8000-00000000000b"), T0, T0 + timedelta(minutes=1), 9 * S)
C = Observation(
    UUID("ffffffff-0000-4000-8000-00000000000c"),
    T0 + timedelta(seconds=20),
    T0 + timedelta(minutes=1),
    1 * S,
)


def test_tick_id_is_prefixed_with_datacenter_and_host_then_a_uuid() -> None:
    found = tick_id("eu-west_1", "rack3-node07", [A, B])
    prefix = "eu-west_1.rack3-node07."
    assert found.startswith(prefix)
    assert str(UUID(found[len(prefix) :])) == found[len(prefix) :]


def test_tick_id_is_the_same_for_the_same_intervals() -> None:
    assert tick_id("dc", "h1", [A, B, C]) == tick_id("dc", "h1", [A, B, C])


def test_tick_id_does_not_depend_on_the_order_of_observations() -> None:
    ids = {tick_id("dc", "h1", list(order)) for order in itertools.permutations([A, B, C])}
    assert len(ids) == 1


def test_tick_id_depends_on_the_intervals_not_on_the_cpu_counter() -> None:
    # The docstring's contract: the same intervals give the same id.
    assert tick_id("dc", "h1", [A, replace(B, cpu_time_ns=0)]) == tick_id("dc", "h1", [A, B])


@pytest.mark.parametrize(
    "changed",
    [
        replace(B, until=B.until + timedelta(microseconds=1)),
        replace(B, since=B.since - timedelta(seconds=1)),
        replace(B, instance_id=UUID("00000000-0000-4000-8000-0000000000bb")),
    ],
)
def test_tick_id_changes_when_an_interval_changes(changed: Observation) -> None:
    assert tick_id("dc", "h1", [A, changed]) != tick_id("dc", "h1", [A, B])


def test_tick_id_changes_when_an_interval_is_added_or_dropped() -> None:
    both = tick_id("dc", "h1", [A, B])
    assert tick_id("dc", "h1", [A]) != both
    assert tick_id("dc", "h1", [A, B, C]) != both


def test_tick_id_differs_between_hosts_and_datacenters_for_the_same_intervals() -> None:
    ids = {
        tick_id("dc1", "h1", [A, B]),
        tick_id("dc1", "h2", [A, B]),
        tick_id("dc2", "h1", [A, B]),
    }
    assert len(ids) == 3
