"""Login throttling in Redis, per account and per client address.

Policy: failures are counted per key in a 15-minute window. From the 5th failure on an account
(20th from one address, which may be a whole NAT'ed lab) the key is locked for 1 s, doubling
with every further failure up to 15 minutes. A successful login clears the account's count.
While a key is locked no password is checked at all, and the caller gets the same generic error.
"""

from __future__ import annotations

from redis.asyncio import Redis

WINDOW_S = 900
MAX_LOCK_S = 900


class LoginThrottle:
    """Counts failed logins and locks accounts and addresses that fail too often."""

    def __init__(
        self, redis: Redis, prefix: str, *, account_limit: int = 5, address_limit: int = 20
    ):
        self._redis = redis
        self._prefix = f"{prefix}auth:login:"
        self._limits = {"acct": account_limit, "addr": address_limit}

    def _keys(self, email: str, address: str | None) -> list[tuple[str, str]]:
        keys = [("acct", email)]
        if address:
            keys.append(("addr", address))
        return keys

    async def locked(self, email: str, address: str | None) -> bool:
        """Return True when the account or the address is locked now."""
        names = [f"{self._prefix}lock:{kind}:{value}" for kind, value in self._keys(email, address)]
        return bool(await self._redis.exists(*names))

    async def failed(self, email: str, address: str | None) -> None:
        """Count a failure and lock what has failed too often."""
        for kind, value in self._keys(email, address):
            count_key = f"{self._prefix}fail:{kind}:{value}"
            pipe = self._redis.pipeline()
            pipe.incr(count_key)
            pipe.expire(count_key, WINDOW_S)
            count = int((await pipe.execute())[0])
            over = count - self._limits[kind]
            if over >= 0:
                lock_s = min(MAX_LOCK_S, 2**over)
                await self._redis.set(f"{self._prefix}lock:{kind}:{value}", 1, ex=lock_s)

    async def succeeded(self, email: str) -> None:
        """Forget the account's failures."""
        await self._redis.delete(
            f"{self._prefix}fail:acct:{email}", f"{self._prefix}lock:acct:{email}"
        )
