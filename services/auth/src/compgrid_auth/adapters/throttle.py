"""Login throttling in Redis, per account and per client address.

Policy: attempts are counted per key in a 15-minute window, before the password is checked,
so parallel guesses cannot slip past the count. From the 5th attempt on an account (20th from
one address, which may be a whole NAT'ed lab) each attempt must first take the key's lock
(``SET NX``) for 1 s, doubling with every further attempt up to 15 minutes: one guess at a time,
ever further apart. A successful login clears the account's count and takes its attempt back
from the address. While a key is locked no password is checked at all, and the caller gets the
same generic error.
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

    async def attempt(self, email: str, address: str | None) -> bool:
        """Count an attempt; return False when it must be refused without checking anything."""
        keys = self._keys(email, address)
        locks = [f"{self._prefix}lock:{kind}:{value}" for kind, value in keys]
        if await self._redis.exists(*locks):
            return False
        for (kind, value), lock in zip(keys, locks, strict=True):
            count_key = f"{self._prefix}fail:{kind}:{value}"
            pipe = self._redis.pipeline()
            pipe.incr(count_key)
            pipe.expire(count_key, WINDOW_S)
            count = int((await pipe.execute())[0])
            over = count - self._limits[kind]
            if over >= 0 and not await self._redis.set(
                lock, 1, ex=min(MAX_LOCK_S, 2**over), nx=True
            ):
                return False
        return True

    async def succeeded(self, email: str, address: str | None) -> None:
        """Forget the account's attempts; a good login does not count against its address."""
        await self._redis.delete(
            f"{self._prefix}fail:acct:{email}", f"{self._prefix}lock:acct:{email}"
        )
        if address:
            # The count may have expired since the attempt: never leave a key without a TTL.
            key = f"{self._prefix}fail:addr:{address}"
            pipe = self._redis.pipeline()
            pipe.decr(key)
            pipe.expire(key, WINDOW_S)
            await pipe.execute()
