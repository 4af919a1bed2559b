"""Per-caller request limits shared by every gateway process, counted in Redis.

A caller (a bearer token, or a client address without one) may send ``burst`` requests in any
window of ``burst / rate`` seconds: a moving window from the ``limits`` library, so the
sustained rate is ``rate`` per second and no window boundary lets twice the burst through. The
counts live in Redis, so N gateway replicas allow the limit once, not N times. When Redis does
not answer, each process counts on its own until it does (protection stays, only sharing is
lost): a Redis outage must not take the API down with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

from compgrid_runtime.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Take:
    """One request counted: whether it may pass, how many are left, and when one frees up."""

    allowed: bool
    remaining: int
    retry_after_s: float


class RateLimits:
    """Requests allowed per key across every process sharing one Redis."""

    def __init__(self, redis_url: str, *, rate: float, burst: int, prefix: str) -> None:
        self.burst = burst
        self.item = RateLimitItemPerSecond(burst, max(1, round(burst / rate)))
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
