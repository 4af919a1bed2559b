"""Who rebuilds the counters: one metering process at a time, and only for the Redis it began on.

``P:rebuilding`` holds a random token (``SET NX`` with a lease, renewed while the replay goes
on; a process that dies lets it expire). The rebuild marks the counters complete (``P:intact``)
only if its token is still there, in the same script: if Redis lost its data again while the
replay ran, the token went with it and the counters stay incomplete for the next rebuild.
"""

from __future__ import annotations

import uuid

from compgrid_metering.adapters.counters import Counters

_FINISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], '1')
redis.call('DEL', KEYS[1])
return 1
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

LEASE_MS = 120_000
"""How long a rebuild's hold lasts without being renewed (renewed after every batch)."""


class RebuildLock:
    """The hold one process has on rebuilding the counters."""

    def __init__(self, counters: Counters) -> None:
        self._redis = counters.redis
        self._key = counters.key("rebuilding")
        self._intact = counters.key("intact")
        self._token = uuid.uuid4().hex
        self._finish = self._redis.register_script(_FINISH)
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)

    async def acquire(self) -> bool:
        """Take the hold; False when another process has it."""
        return bool(await self._redis.set(self._key, self._token, nx=True, px=LEASE_MS))

    async def renew(self) -> bool:
        """Extend the hold; False when it was lost (expired, or Redis lost its data)."""
        return bool(await self._renew(keys=[self._key], args=[self._token, LEASE_MS]))

    async def finish(self) -> bool:
        """Mark the counters complete and let go, if the hold is still ours."""
        return bool(await self._finish(keys=[self._key, self._intact], args=[self._token]))

    async def release(self) -> None:
        """Let go without marking anything (the rebuild failed)."""
        await self._release(keys=[self._key], args=[self._token])
