"""Redelivery policy for consumers.

A message whose handler raised is negatively acknowledged with an exponential delay:
``base * 2 ** (delivery - 1)`` seconds, capped at ``cap``. When its delivery count reaches
``max_deliver`` it is copied to the dead-letter stream and terminated, so one bad message
never blocks the ones behind it. Malformed messages skip the retries entirely.
"""

from __future__ import annotations

from dataclasses import dataclass


class PermanentError(Exception):
    """The message can never succeed (a domain rule says so): dead-letter it at once."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a consumer retries one message."""

    max_deliver: int = 5
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 60.0

    def delay(self, delivery: int) -> float:
        """Return the nak delay after the given (1-based) failed delivery."""
        return min(self.backoff_cap_s, self.backoff_base_s * 2.0 ** max(0, delivery - 1))

    def exhausted(self, delivery: int) -> bool:
        """Return True when this delivery was the last one allowed."""
        return delivery >= self.max_deliver

    @classmethod
    def lasting(
        cls, seconds: float, *, backoff_base_s: float = 0.5, backoff_cap_s: float = 30.0
    ) -> RetryPolicy:
        """A policy that keeps retrying for at least ``seconds`` of backoff (say, to outlast an
        outage of a server the handler needs) before dead-lettering."""
        policy = cls(backoff_base_s=backoff_base_s, backoff_cap_s=backoff_cap_s)
        waited, delivery = 0.0, 1
        while waited < seconds:
            waited += policy.delay(delivery)
            delivery += 1
        return cls(delivery, backoff_base_s, backoff_cap_s)
