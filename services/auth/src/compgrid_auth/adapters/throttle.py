"""Password-guessing throttle in Redis that cannot be turned into a lock-out.

Policy: attempts are counted in a 15-minute window *before* the password is checked, so
parallel guesses cannot slip past the count, in three scopes:

- account and address: from the 5th attempt on one account from one address;
- address: from the 20th attempt from one address on any accounts (a NAT'ed lab shares one);
- account: once 5 different addresses failed on one account (a distributed attack). This scope
  never applies to addresses the account has signed in from successfully in the last 90 days,
  so an attack slows the account down everywhere except where its owner usually is.

Past its limit, each attempt in a scope must first take the scope's lock (``SET NX``) for 1 s,
doubling with every further attempt: one guess at a time, ever further apart. The locks of the
first two scopes grow up to 15 minutes; they hold back only the guessing address. The account
scope's lock grows up to 30 s only: it holds back every address new to the account, the owner's
too, so it may slow the owner down but never keep them out. While a lock is held nothing is
checked and the caller is told when to come back. Because the first scope is keyed by address
too, an attacker slows down only themselves: the owner signing in from another address is at
most slowed by the account scope. A successful sign-in clears its account-and-address
scope, takes its attempt back from the address, no longer counts the address among those
failing on the account, and remembers it as one the account's owner uses.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from redis.asyncio import Redis

WINDOW_S = 900
MAX_LOCK_S = 900
ACCOUNT_MAX_LOCK_S = 30
"""The account scope holds back the owner's new addresses too: slowing, never locking out."""
KNOWN_TTL_S = 90 * 86_400
KNOWN_MAX = 20
"""How many recent good addresses an account remembers."""


@dataclass(frozen=True)
class Verdict:
    """Whether an attempt may check a password; else after how long to try again.

    ``attacked`` says the account is past a limit (its owner may want to know)."""

    allowed: bool
    retry_after_s: int = 0
    attacked: bool = False


@dataclass(frozen=True)
class _Scope:
    kind: str
    value: str
    limit: int

    @property
    def about_account(self) -> bool:
        return self.kind != "addr"

    @property
    def max_lock_s(self) -> int:
        return ACCOUNT_MAX_LOCK_S if self.kind == "acct" else MAX_LOCK_S


class LoginThrottle:
    """Counts password attempts and spaces them out per account-and-address, address and
    (for unknown addresses) account."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        *,
        pair_limit: int = 5,
        address_limit: int = 20,
        account_limit: int = 5,
    ):
        self._redis = redis
        self._prefix = f"{prefix}auth:login:"
        self._limits = {"pair": pair_limit, "addr": address_limit, "acct": account_limit}

    def _key(self, what: str, scope: _Scope) -> str:
        return f"{self._prefix}{what}:{scope.kind}:{scope.value}"

    async def _scopes(self, email: str, address: str | None) -> list[_Scope]:
        scopes = [_Scope("pair", f"{email}|{address or '-'}", self._limits["pair"])]
        if address:
            scopes.append(_Scope("addr", address, self._limits["addr"]))
        seen = address and await self._redis.zscore(f"{self._prefix}known:{email}", address)
        if not seen or seen < time.time() - KNOWN_TTL_S:
            scopes.append(_Scope("acct", email, self._limits["acct"]))
        return scopes

    async def attempt(self, email: str, address: str | None) -> Verdict:
        """Count an attempt; refuse it (with when to retry) while one of its scopes is locked."""
        scopes = await self._scopes(email, address)
        pipe = self._redis.pipeline()
        for scope in scopes:
            pipe.pttl(self._key("lock", scope))
        waits = await pipe.execute()
        locked = [(ms, s) for ms, s in zip(waits, scopes, strict=True) if ms and ms > 0]
        if locked:
            return _refusal(locked)
        attacked = False
        for scope in scopes:
            over = await self._count(scope, address) - scope.limit
            if over < 0:
                continue
            attacked = attacked or scope.about_account
            lock = self._key("lock", scope)
            if not await self._redis.set(lock, 1, ex=min(scope.max_lock_s, 2**over), nx=True):
                return _refusal([(await self._redis.pttl(lock), scope)])
        return Verdict(True, attacked=attacked)

    async def _count(self, scope: _Scope, address: str | None) -> int:
        """Add the attempt to the scope's window; the account scope counts addresses."""
        key = self._key("fail", scope)
        pipe = self._redis.pipeline()
        if scope.kind == "acct":
            pipe.sadd(key, address or "-")
            pipe.expire(key, WINDOW_S)
            pipe.scard(key)
            return int((await pipe.execute())[2])
        pipe.incr(key)
        pipe.expire(key, WINDOW_S)
        return int((await pipe.execute())[0])

    async def succeeded(self, email: str, address: str | None) -> None:
        """Clear the account-and-address scope, give the address its attempt back and
        remember it as one the account's owner uses."""
        pair = _Scope("pair", f"{email}|{address or '-'}", 0)
        pipe = self._redis.pipeline()
        pipe.delete(self._key("fail", pair), self._key("lock", pair))
        if address:
            # The count may have expired since the attempt: never leave a key without a TTL.
            count = self._key("fail", _Scope("addr", address, 0))
            pipe.decr(count)
            pipe.expire(count, WINDOW_S)
            pipe.srem(self._key("fail", _Scope("acct", email, 0)), address)  # not an attacker
            known = f"{self._prefix}known:{email}"
            pipe.zadd(known, {address: time.time()})
            pipe.zremrangebyrank(known, 0, -KNOWN_MAX - 1)  # keep the newest only
            pipe.expire(known, KNOWN_TTL_S)
        await pipe.execute()

    async def first_warning(self, email: str) -> bool:
        """Return True once per window for an attacked account (to tell its owner once)."""
        key = f"{self._prefix}warned:{email}"
        return bool(await self._redis.set(key, 1, ex=WINDOW_S, nx=True))


def _refusal(locked: list[tuple[int, _Scope]]) -> Verdict:
    wait_ms = max(ms for ms, _ in locked)
    attacked = any(scope.about_account for _, scope in locked)
    return Verdict(False, retry_after_s=max(1, math.ceil(wait_ms / 1000)), attacked=attacked)
