"""Signing keys: Ed25519 keys kept (encrypted) in the auth schema, public halves as a JWKS.

Policy: exactly one key signs (the newest that is not retired). Rotation adds a new signing key
and retires the old one, which stays in the published JWKS until every token it signed has
expired (access TTL plus leeway), so rotation needs no downtime. Private keys are encrypted
with a key derived from the service's ``secret_key``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import jwt
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from compgrid_auth.adapters.tables import signing_key
from compgrid_events import utc_now, uuid7
from compgrid_runtime.tokens import AUDIENCE, DISABLED_PREFIX, ISSUER, JWKS_KEY, KEYS_BUCKET


@dataclass(frozen=True)
class KeyPair:
    """One signing key: its id, private key, public JWK and when it was retired."""

    kid: str
    private: Ed25519PrivateKey
    public_jwk: dict[str, Any]
    retired_at: datetime | None


def _fernet(secret: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest()))


def _public_jwk(kid: str, private: Ed25519PrivateKey) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(OKPAlgorithm.to_jwk(private.public_key()))
    return {**jwk, "kid": kid, "use": "sig", "alg": "EdDSA"}


class TokenSigner:
    """Signs access tokens with the current key and keeps the JWKS published."""

    def __init__(self, secret: str, access_ttl: timedelta) -> None:
        self._fernet = _fernet(secret)
        self._access_ttl = access_ttl
        self._keys: list[KeyPair] = []

    async def load(self, session: AsyncSession) -> None:
        """Read the keys from the schema, creating the first one when there is none."""
        rows = (await session.execute(select(signing_key).order_by(signing_key.c.created_at))).all()
        self._keys = [self._decode(row) for row in rows]
        if not any(k.retired_at is None for k in self._keys):
            await self.rotate(session)

    async def rotate(self, session: AsyncSession) -> str:
        """Add a new signing key and retire the current one; return the new key id."""
        now = utc_now()
        await session.execute(
            update(signing_key).where(signing_key.c.retired_at.is_(None)).values(retired_at=now)
        )
        kid = f"{now:%Y%m%d%H%M%S}-{secrets.token_hex(4)}"
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        public = _public_jwk(kid, private)
        await session.execute(
            insert(signing_key).values(
                kid=kid, private_key=self._fernet.encrypt(pem).decode(), public_jwk=public
            )
        )
        self._keys = [
            KeyPair(k.kid, k.private, k.public_jwk, k.retired_at or now) for k in self._keys
        ]
        self._keys.append(KeyPair(kid, private, public, None))
        return kid

    def _decode(self, row: Any) -> KeyPair:
        pem = self._fernet.decrypt(row.private_key.encode())
        private = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(private, Ed25519PrivateKey)
        return KeyPair(row.kid, private, row.public_jwk, row.retired_at)

    @property
    def key_ids(self) -> frozenset[str]:
        """Return the ids of every key this signer knows."""
        return frozenset(k.kid for k in self._keys)

    def jwks(self) -> dict[str, Any]:
        """Return the public keys that may still verify live tokens."""
        horizon = utc_now() - self._access_ttl - timedelta(minutes=1)
        live = [k for k in self._keys if k.retired_at is None or k.retired_at > horizon]
        return {"keys": [k.public_jwk for k in live]}

    def sign_access(
        self,
        user_id: UUID,
        roles: Sequence[str],
        projects: dict[str, str],
        session_id: UUID | None = None,
    ) -> tuple[str, datetime]:
        """Return a signed access token of a session (``sid``; a new one when not given) and
        its expiry."""
        current = next(k for k in reversed(self._keys) if k.retired_at is None)
        now = utc_now()
        expires = now + self._access_ttl
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": str(user_id),
            "typ": "access",
            "roles": sorted(roles),
            "projects": projects,
            "iat": int(now.timestamp()),
            "exp": int(expires.timestamp()),
            "jti": secrets.token_hex(12),
            "sid": str(session_id or uuid7()),
        }
        token = jwt.encode(claims, current.private, algorithm="EdDSA", headers={"kid": current.kid})
        return token, expires


async def key_bucket(js: JetStreamContext) -> Any:
    """Return the auth key-value bucket, creating it (auth owns it) when missing."""
    try:
        return await js.key_value(KEYS_BUCKET)
    except BucketNotFoundError:
        return await js.create_key_value(
            bucket=KEYS_BUCKET, history=1, description="CompGrid JWKS and disabled accounts"
        )


async def publish_jwks(js: JetStreamContext, signer: TokenSigner) -> None:
    """Publish the current JWKS for every service's verifier."""
    kv = await key_bucket(js)
    await kv.put(JWKS_KEY, json.dumps(signer.jwks()).encode())


async def publish_disabled(js: JetStreamContext, user_id: UUID, disabled: bool) -> None:
    """Tell every verifier that an account is disabled (or enabled again)."""
    kv = await key_bucket(js)
    key = f"{DISABLED_PREFIX}{user_id}"
    if disabled:
        await kv.put(key, b"1")
    else:
        await kv.delete(key)
