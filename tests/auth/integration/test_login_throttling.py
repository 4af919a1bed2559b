"""Password guessing is slowed per account-and-address, per address and (for addresses the
owner never used) per account, answered 429 with when to retry, and never locks the owner out."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from compgrid_auth.use_cases.guessing import THROTTLED
from compgrid_auth.use_cases.sessions import LOGIN_FAILED
from compgrid_runtime.errors import DomainError
from tests.auth.integration.conftest import PASSWORD, AuthHarness
from tests.harness.servers import Servers

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis]

WRONG = "definitely not the password"
WARNING_SUBJECT = "Someone is trying to sign in to your CompGrid account"


def _address() -> str:
    """A client address of this test alone."""
    n = uuid.uuid4().int
    return f"10.{n % 250}.{(n >> 8) % 250}.{(n >> 16) % 250}"


@pytest.fixture
async def redis(real: Servers) -> AsyncIterator[Redis]:
    client = Redis.from_url(real.redis_url)
    yield client
    await client.aclose()


def _lock(real: Servers, kind: str, value: str) -> str:
    return f"{real.redis_prefix}auth:login:lock:{kind}:{value}"


async def _guess(auth: AuthHarness, email: str, password: str, address: str) -> DomainError:
    return await auth.refused("login", {"email": email, "password": password}, address=address)


async def _held_back(auth: AuthHarness, email: str, address: str | None) -> DomainError:
    """Guess from ``address`` (None: a new one each time) until refused with at least 2 s still
    to wait, so that the very next attempt from there is surely refused too (a 1 s wait can run
    out while a slow machine hashes)."""
    for _ in range(60):
        error = await _guess(auth, email, WRONG, address or _address())
        if error.status == 429 and (error.retry_after_s or 0) >= 2:
            return error
        await asyncio.sleep(0.1)
    pytest.fail("never held back for 2 s or more")


def _warnings(auth: AuthHarness, email: str) -> int:
    return sum(1 for m in auth.inbox.to(email) if m["Subject"] == WARNING_SUBJECT)


async def test_thirty_wrong_passwords_are_answered_429_and_the_owner_still_gets_in(
    auth: AuthHarness,
) -> None:
    _, email = await auth.user()
    attacker = _address()

    errors = [await _guess(auth, email, f"{WRONG} {i}", attacker) for i in range(30)]

    assert [e.status for e in errors[:5]] == [401] * 5
    throttled = [e for e in errors if e.status == 429]
    assert len(throttled) >= 20
    for error in throttled:
        assert error.code == "too_many_attempts"
        assert error.message == THROTTLED
        assert error.retry_after_s is not None
        assert error.retry_after_s >= 1
    # the attacker's address stays slowed down, whatever it sends...
    await _held_back(auth, email, attacker)
    refused = await _guess(auth, email, PASSWORD, attacker)
    assert refused.status == 429
    # ...while the owner signs in from anywhere else at once
    assert auth.app.verifier.verify(await auth.login(email, address=_address()))
    # and is told once, not thirty times
    assert _warnings(auth, email) == 1


async def test_each_further_guess_from_an_address_waits_twice_as_long(
    auth: AuthHarness, real: Servers, redis: Redis
) -> None:
    _, email = await auth.user()
    attacker = _address()
    lock = _lock(real, "pair", f"{email}|{attacker}")
    for _ in range(4):
        await _guess(auth, email, WRONG, attacker)
        assert not await redis.exists(lock)
    windows = []
    for _ in range(4):
        await redis.delete(lock)  # the wait is over
        started = time.monotonic()
        await _guess(auth, email, WRONG, attacker)
        # the lock is taken before the password is hashed: add back the time that took
        windows.append((await redis.pttl(lock), (time.monotonic() - started) * 1000))

    for n, (left_ms, spent_ms) in enumerate(windows):
        assert left_ms <= 1000 * 2**n
        assert left_ms < 0 or left_ms + spent_ms > 1000 * 2**n - 100
    assert windows[3][0] > 0
    refused = await _guess(auth, email, PASSWORD, attacker)
    assert refused.status == 429
    assert refused.retry_after_s is not None
    assert 4 <= refused.retry_after_s <= 8


async def test_a_distributed_attack_slows_new_addresses_but_not_the_owners_own(
    auth: AuthHarness, real: Servers, redis: Redis
) -> None:
    _, email = await auth.user()
    home = _address()
    assert await auth.login(email, address=home)  # where the owner usually signs in

    for _ in range(5):  # five addresses, one guess each
        assert (await _guess(auth, email, WRONG, _address())).status == 401
    await _held_back(auth, email, None)  # more new addresses, each waiting longer
    # the account's hold also holds back the owner's new addresses: it stops growing at 30 s
    lock = _lock(real, "acct", email)
    holds = []
    for _ in range(6):
        await redis.delete(lock)  # the wait is over
        await _guess(auth, email, WRONG, _address())
        holds.append(await redis.pttl(lock))
    assert all(0 < ms <= 30_000 for ms in holds), holds
    assert holds[-1] > 16_000, holds

    stranger = await _guess(auth, email, PASSWORD, _address())
    assert stranger.status == 429
    assert stranger.retry_after_s is not None
    assert auth.app.verifier.verify(await auth.login(email, address=home))
    assert _warnings(auth, email) == 1


async def test_an_address_guessing_many_accounts_is_slowed_for_all_of_them(
    auth: AuthHarness,
) -> None:
    _, email = await auth.user()
    address = _address()
    for i in range(20):
        spray = f"spray-{i}-{uuid.uuid4().hex[:8]}@example.org"
        assert (await _guess(auth, spray, PASSWORD, address)).status == 401

    refused = await _guess(auth, email, PASSWORD, address)
    assert refused.status == 429
    assert refused.message == THROTTLED
    # the account itself is not slowed: its owner gets in from elsewhere
    assert await auth.login(email, address=_address())
    assert _warnings(auth, email) == 0


async def test_unknown_accounts_are_throttled_like_real_ones(auth: AuthHarness) -> None:
    nobody = f"nobody-{uuid.uuid4().hex[:10]}@example.org"
    _, email = await auth.user()
    for target in (nobody, email):
        address = _address()
        statuses = [(await _guess(auth, target, WRONG, address)).status for _ in range(5)]
        assert statuses == [401] * 5
        assert (await _held_back(auth, target, address)).code == "too_many_attempts"
    assert (await _guess(auth, nobody, WRONG, _address())).message == LOGIN_FAILED


async def test_a_burst_of_parallel_guesses_checks_at_most_five_passwords(
    auth: AuthHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, email = await auth.user()
    checked: list[str] = []
    real_verify = auth.deps.hasher.verify

    async def spy(password_hash: str | None, password: str) -> bool:
        checked.append(password)
        return await real_verify(password_hash, password)

    monkeypatch.setattr(auth.deps.hasher, "verify", spy)

    async def guess(i: int) -> int:
        with pytest.raises(DomainError) as refused:
            await auth.call(
                "login", {"email": email, "password": f"guess number {i:04d}"}, address=_address()
            )
        return refused.value.status

    statuses = await asyncio.gather(*(guess(i) for i in range(30)))

    assert set(statuses) == {401, 429}, statuses
    assert len(checked) <= 5


async def test_good_logins_do_not_use_up_an_address(auth: AuthHarness) -> None:
    # A lab behind one NAT address logs in all day; only failures may count against it.
    _, email = await auth.user()
    address = _address()
    for _ in range(25):
        assert await auth.login(email, address=address)


async def test_wrong_current_passwords_are_throttled_the_same_way(auth: AuthHarness) -> None:
    _, email = await auth.user()
    token = await auth.login(email)
    thief = _address()
    body = {"current_password": WRONG, "new_password": "another fine passphrase 42"}

    errors = [
        await auth.refused("change_password", body, token=token, address=thief) for _ in range(5)
    ]
    for _ in range(60):  # until held back for 2 s or more
        errors.append(await auth.refused("change_password", body, token=token, address=thief))
        if errors[-1].status == 429 and (errors[-1].retry_after_s or 0) >= 2:
            break
        await asyncio.sleep(0.1)

    assert [e.status for e in errors[:5]] == [422] * 5
    assert {e.status for e in errors[5:]} == {422, 429}
    assert all(e.retry_after_s for e in errors[5:] if e.status == 429)
    # the same guesses count against signing in from there
    assert (await _guess(auth, email, PASSWORD, thief)).status == 429
    # the owner, elsewhere, changes the password with the right one
    right = {**body, "current_password": PASSWORD}
    assert await auth.call("change_password", right, token=token, address=_address()) == {
        "changed": True
    }
    assert _warnings(auth, email) == 1
