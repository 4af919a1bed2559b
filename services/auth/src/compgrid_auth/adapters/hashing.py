"""argon2id password hashing, run in a worker thread so the event loop never waits on it.

Parameters (docs/decisions/0005-argon2-parameters.md): m=19 MiB, t=2, p=1 — OWASP's minimum
for argon2id, which keeps a login near 20 ms on this class of machine.
"""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher as Argon2Hasher
from argon2 import Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = Argon2Hasher(
    time_cost=2, memory_cost=19 * 1024, parallelism=1, hash_len=32, salt_len=16, type=Type.ID
)
_DUMMY = _HASHER.hash("compgrid-dummy-password")


class PasswordHasher:
    """Hashes and verifies passwords off the event loop."""

    async def hash(self, password: str) -> str:
        """Return the argon2id hash of a password."""
        return await asyncio.to_thread(_HASHER.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Return True when the password matches; a missing hash costs the same time."""
        try:
            return await asyncio.to_thread(_HASHER.verify, password_hash or _DUMMY, password) and (
                password_hash is not None
            )
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        """Return True when the hash was made with other parameters than today's."""
        return _HASHER.check_needs_rehash(password_hash)
