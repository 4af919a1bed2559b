"""Retry policies: a policy can be asked to last a given time."""

from __future__ import annotations

import pytest

from compgrid_runtime.retry import RetryPolicy


@pytest.mark.parametrize("seconds", [1, 10, 7.5, 3600, 6 * 3600])
def test_a_lasting_policy_backs_off_for_at_least_that_long_and_no_delivery_more(
    seconds: float,
) -> None:
    policy = RetryPolicy.lasting(seconds)
    waits = [policy.delay(d) for d in range(1, policy.max_deliver)]
    assert sum(waits) >= seconds
    assert sum(waits[:-1]) < seconds
    assert max(waits) <= policy.backoff_cap_s == 30.0
