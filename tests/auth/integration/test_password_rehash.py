"""A hash made with older (weaker) argon2id parameters is upgraded at the next login."""

from __future__ import annotations

import asyncpg
import pytest
from argon2 import PasswordHasher as Argon2Hasher
from argon2 import Type

from compgrid_runtime.errors import DomainError
from tests.auth.integration.conftest import PASSWORD, AuthHarness
from tests.harness.servers import Servers

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis]


async def test_login_upgrades_an_old_hash_and_keeps_the_password(
    auth: AuthHarness, real: Servers
) -> None:
    user_id, email = await auth.user("member")
    weak = Argon2Hasher(time_cost=1, memory_cost=8 * 1024, parallelism=1, type=Type.ID)
    conn = await asyncpg.connect(real.database_url.replace("postgresql+asyncpg", "postgresql", 1))
    try:
        await conn.execute(
            "UPDATE auth.user_account SET password_hash = $1 WHERE id = $2",
            weak.hash(PASSWORD),
            user_id,
        )
        await auth.login(email)
        upgraded = await conn.fetchval(
            "SELECT password_hash FROM auth.user_account WHERE id = $1", user_id
        )
    finally:
        await conn.close()
    assert upgraded.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert await auth.login(email)  # the same password still works with the new hash


async def test_login_leaves_a_current_hash_alone(auth: AuthHarness, real: Servers) -> None:
    user_id, email = await auth.user("member")
    conn = await asyncpg.connect(real.database_url.replace("postgresql+asyncpg", "postgresql", 1))
    try:
        query = "SELECT password_hash FROM auth.user_account WHERE id = $1"
        before = await conn.fetchval(query, user_id)
        await auth.login(email)
        after = await conn.fetchval(query, user_id)
    finally:
        await conn.close()
    assert after == before


async def test_an_account_disabled_while_its_password_is_checked_gets_no_session(
    auth: AuthHarness, real: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_id, email = await auth.user("member")
    admin = auth.tokens["admin"]
    original = auth.deps.hasher.verify

    async def verify_then_disable(stored: str | None, password: str) -> bool:
        matched = await original(stored, password)
        await auth.call("users.disable", {"user_id": user_id}, token=admin)
        return matched

    monkeypatch.setattr(auth.deps.hasher, "verify", verify_then_disable)
    with pytest.raises(DomainError) as refused:
        await auth.login(email)
    assert refused.value.status == 401
    monkeypatch.undo()
    conn = await asyncpg.connect(real.database_url.replace("postgresql+asyncpg", "postgresql", 1))
    try:
        sessions = await conn.fetchval(
            "SELECT count(*) FROM auth.refresh_token WHERE user_id = $1", user_id
        )
    finally:
        await conn.close()
    assert sessions == 0
