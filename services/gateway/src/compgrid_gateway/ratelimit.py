"""Per-caller request limits shared by every gateway process, counted in Redis.

A caller (a signed-in session, or a client address without a valid token) may send ``amount``
requests in any moving window of ``window`` whole seconds (the ``limits`` library counts whole
seconds), where ``amount / window`` is exactly ``rate``: the window is the fewest whole seconds
that hold ``burst`` requests at ``rate`` and a whole number of requests, so the burst is rounded
up (rate 100/s with burst 50 allows 100 in any second; rate 0.7/s with burst 6 allows 7 in any
10 s). No window boundary lets twice the burst through. The counts live in Redis, so N gateway
replicas allow the limit once, not N times. When Redis does not answer, each process counts on
its own until it does (protection stays, only sharing is lost): a Redis outage must not take the
API down with it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from fractions import Fraction

from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

from compgrid_runtime.logs import get_logger

log = get_logger(__name__)


def moving_window(rate: float, burst: int) -> RateLimitItemPerSecond:
    """``amount`` requests per ``window`` whole seconds with ``amount / window == rate``
    exactly (the rate read as a fraction of at most a day's denominator) and
    ``amount >= burst``: the smallest whole multiple of that fraction holding the burst."""
    share = Fraction(rate).limit_denominator(86_400)
    if share.numerator <= 0:
        raise ValueError(f"a rate of {rate}/s is less than one request a day")
    times = max(1, math.ceil(burst / share.numerator))
    return RateLimitItemPerSecond(share.numerator * times, share.denominator * times)


@dataclass(frozen=True)
class Take:
    """One request counted: whether it may pass, how many are left, and when one frees up."""

    allowed: bool
    remaining: int
    retry_after_s: float


class RateLimits:
    """Requests allowed per key across every process sharing one Redis."""

    def __init__(self, redis_url: str, *, rate: float, burst: int, prefix: str) -> None:
        self.item = moving_window(rate, burst)
        self.burst = self.item.amount
        storage = RedisStorage(
            f"async+{redis_url}", implementation="redispy", key_prefix=prefix, wrap_exceptions=True
        )
        self.shared = MovingWindowRateLimiter(storage)
        self.local = MovingWindowRateLimiter(MemoryStorage())

    async def take(self, key: str) -> Take:
        """Count one request of ``key``."""
        try:
            return await self._take(self.shared, key)
        except StorageError as exc:
            log.warning("rate limits counted in this process only", error=str(exc.storage_error))
            return await self._take(self.local, key)

    async def _take(self, limiter: MovingWindowRateLimiter, key: str) -> Take:
        allowed = await limiter.hit(self.item, key)
        stats = await limiter.get_window_stats(self.item, key)
        return Take(allowed, stats.remaining, max(0.0, stats.reset_time - time.time()))
