"""The shared verifier refuses every kind of forged or stale token; keys rotate without downtime."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import jwt
import nats
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client as NatsClient

from compgrid_auth.adapters.keys import KeyPair, TokenSigner, publish_jwks
from compgrid_auth.bootstrap import build
from compgrid_runtime.errors import DomainError, Unauthorized
from compgrid_runtime.tokens import (
    AUDIENCE,
    ISSUER,
    KeyWatcher,
    TokenVerifier,
)
from tests.auth.integration.conftest import AuthHarness
from tests.harness.servers import Servers

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis]

Verifier = Callable[[], Awaitable[tuple[TokenVerifier, KeyWatcher]]]


@pytest.fixture
async def new_verifier(real: Servers) -> AsyncIterator[Verifier]:
    """Start verifiers as other services have them: own NATS connection and KeyWatcher each."""
    started: list[tuple[NatsClient, KeyWatcher]] = []

    async def start() -> tuple[TokenVerifier, KeyWatcher]:
        client = await nats.connect(real.nats_url)
        verifier = TokenVerifier()
        watcher = KeyWatcher(client.jetstream(), verifier)
        watcher.start()
        started.append((client, watcher))
        await asyncio.wait_for(watcher.ready.wait(), 10)
        return verifier, watcher

    yield start
    for client, watcher in started:
        await watcher.stop()
        await client.close()


def _current_key(auth: AuthHarness) -> KeyPair:
    return next(k for k in reversed(auth.deps.signer._keys) if k.retired_at is None)


def _claims(user_id: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": user_id,
        "typ": "access",
        "roles": ["member"],
        "projects": {},
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(key: KeyPair, claims: dict[str, Any]) -> str:
    return jwt.encode(claims, key.private, algorithm="EdDSA", headers={"kid": key.kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _refuses(verifier: TokenVerifier, token: str) -> bool:
    try:
        verifier.verify(token)
    except Unauthorized:
        return True
    return False


async def _wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.05)


async def _loaded_signer(auth: AuthHarness, ttl: timedelta) -> TokenSigner:
    """A signer with the service's own keys (read from its schema) and another lifetime."""
    secret = auth.deps.settings.secret_key.get_secret_value()
    signer = TokenSigner(secret, ttl)
    async with auth.deps.uow() as uow:
        await signer.load(uow.session)
        await uow.commit()
    return signer


# --- the verifier refuses defective tokens ----------------------------------------------------


async def test_a_well_formed_token_signed_by_the_service_key_is_accepted(
    auth: AuthHarness, new_verifier: Verifier
) -> None:
    """The control case for every refusal below: the helpers make tokens the verifier takes."""
    user_id, _ = await auth.user()
    verifier, _ = await new_verifier()
    token = _sign(_current_key(auth), _claims(user_id))
    principal = verifier.verify(token)
    assert str(principal.user_id) == user_id
    assert principal.roles == frozenset({"member"})


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not-a-token",
        "a.b.c",
        "a.b",
        "....",
        _b64(b'{"alg":"EdDSA"}') + "." + _b64(b"[]") + ".",
        _b64(b"\xff\xfe") + "." + _b64(b"{}") + "." + _b64(b"sig"),
        "Bearer " + _b64(b'{"alg":"EdDSA","typ":"JWT"}') + "." + _b64(b"{}") + ".x",
    ],
)
async def test_malformed_tokens_are_refused(
    auth: AuthHarness, new_verifier: Verifier, token: str
) -> None:
    verifier, _ = await new_verifier()
    with pytest.raises(Unauthorized):
        verifier.verify(token)
    with pytest.raises(DomainError) as refused:
        await auth.call("me", token=token)
    assert refused.value.status == 401


async def test_expired_tokens_are_refused(auth: AuthHarness, new_verifier: Verifier) -> None:
    user_id, _ = await auth.user()
    verifier, _ = await new_verifier()
    expired_signer = await _loaded_signer(auth, timedelta(seconds=-60))
    token, expires = expired_signer.sign_access(uuid.UUID(user_id), ["member"], {})
    assert expires.timestamp() < time.time() - 30

    assert _refuses(verifier, token)
    assert _refuses(auth.app.verifier, token)
    with pytest.raises(DomainError) as refused:
        await auth.call("me", token=token)
    assert refused.value.status == 401

    # the same keys with a live lifetime are accepted, so only the expiry made the difference
    live_signer = await _loaded_signer(auth, timedelta(seconds=60))
    live, _ = live_signer.sign_access(uuid.UUID(user_id), ["member"], {})
    assert str(verifier.verify(live).user_id) == user_id


async def test_tokens_signed_by_another_key_are_refused(
    auth: AuthHarness, new_verifier: Verifier
) -> None:
    user_id, _ = await auth.user()
    verifier, _ = await new_verifier()
    rogue = Ed25519PrivateKey.generate()
    claims = _claims(user_id, roles=["admin"])
    with_real_kid = jwt.encode(
        claims, rogue, algorithm="EdDSA", headers={"kid": _current_key(auth).kid}
    )
    with_own_kid = jwt.encode(claims, rogue, algorithm="EdDSA", headers={"kid": "rogue-key"})
    without_kid = jwt.encode(claims, rogue, algorithm="EdDSA")
    for token in (with_real_kid, with_own_kid, without_kid):
        assert _refuses(verifier, token)
        assert _refuses(auth.app.verifier, token)
        with pytest.raises(DomainError) as refused:
            await auth.call("users.list", {}, token=token)
        assert refused.value.status == 401


async def test_alg_none_is_refused(auth: AuthHarness, new_verifier: Verifier) -> None:
    user_id, _ = await auth.user()
    verifier, _ = await new_verifier()
    kid = _current_key(auth).kid
    claims = _claims(user_id, roles=["admin"])
    for alg in ("none", "None", "NONE"):
        header = _b64(json.dumps({"alg": alg, "typ": "JWT", "kid": kid}).encode())
        unsigned = f"{header}.{_b64(json.dumps(claims).encode())}."
        assert _refuses(verifier, unsigned)
        with pytest.raises(DomainError) as refused:
            await auth.call("users.list", {}, token=unsigned)
        assert refused.value.status == 401
    # and with a real signature appended after all
    valid = _sign(_current_key(auth), claims)
    head = _b64(json.dumps({"alg": "none", "kid": kid}).encode())
    assert _refuses(verifier, f"{head}.{valid.split('.', 1)[1]}")


async def test_hs256_signed_with_the_public_key_is_refused(
    auth: AuthHarness, new_verifier: Verifier
) -> None:
    user_id, _ = await auth.user()
    verifier, _ = await new_verifier()
    key = _current_key(auth)
    public = key.private.public_key()
    secrets = [
        public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        json.dumps(key.public_jwk).encode(),
        key.public_jwk["x"].encode(),
    ]
    claims = _claims(user_id, roles=["admin"])
    for secret in secrets:
        for alg in ("HS256", "HS512"):
            token = _hs256({"alg": alg, "typ": "JWT", "kid": key.kid}, claims, secret)
            assert _refuses(verifier, token)
            assert _refuses(auth.app.verifier, token)
    forged = _hs256({"alg": "HS256", "kid": key.kid}, claims, secrets[0])
    with pytest.raises(DomainError) as refused:
        await auth.call("users.list", {}, token=forged)
    assert refused.value.status == 401


async def test_a_tampered_payload_is_refused(auth: AuthHarness, new_verifier: Verifier) -> None:
    user_id, email = await auth.user()
    verifier, _ = await new_verifier()
    token = await auth.login(email)
    header, payload, signature = token.split(".")
    claims = json.loads(_unb64(payload))
    assert claims["roles"] == ["member"]

    escalated = {**claims, "roles": ["admin"]}
    longer = {**claims, "exp": claims["exp"] + 86_400}
    other_user = {**claims, "sub": str(uuid.uuid4())}
    for changed in (escalated, longer, other_user):
        forged = f"{header}.{_b64(json.dumps(changed).encode())}.{signature}"
        assert _refuses(verifier, forged)
        with pytest.raises(DomainError) as refused:
            await auth.call("users.list", {}, token=forged)
        assert refused.value.status == 401
    # a flipped signature byte is refused too
    raw = bytearray(_unb64(signature))
    raw[0] ^= 0x01
    assert _refuses(verifier, f"{header}.{payload}.{_b64(bytes(raw))}")
    # the untouched token is fine
    assert str(verifier.verify(token).user_id) == user_id


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": None},
        {"iat": None},
        {"sub": None},
        {"jti": None},
        {"iss": None},
        {"aud": None},
        {"typ": None},
        {"iss": "someone-else"},
        {"aud": "another-audience"},
        {"typ": "refresh"},
        {"sub": "not-a-uuid"},
        {"sub": 12345},
        {"projects": {"not-a-uuid": "pi"}},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
async def test_tokens_missing_or_with_wrong_claims_are_refused(
    auth: AuthHarness, new_verifier: Verifier, overrides: dict[str, Any]
) -> None:
    user_id, _ = await auth.user()
    verifier, _ = await new_verifier()
    claims = _claims(user_id, **overrides)
    for name, value in overrides.items():
        if value is None:
            assert name not in claims
    token = _sign(_current_key(auth), claims)
    with pytest.raises(Unauthorized):
        verifier.verify(token)
    with pytest.raises(DomainError) as refused:
        await auth.call("me", token=token)
    assert refused.value.status == 401


# --- key rotation -----------------------------------------------------------------------------


async def test_only_admins_rotate_keys(auth: AuthHarness) -> None:
    _, email = await auth.user("pi")
    before = _current_key(auth).kid
    with pytest.raises(DomainError) as refused:
        await auth.call("keys.rotate", {}, token=await auth.login(email))
    assert refused.value.status == 403
    with pytest.raises(DomainError) as anonymous:
        await auth.call("keys.rotate", {})
    assert anonymous.value.status == 401
    assert _current_key(auth).kid == before


async def test_key_rotation_signs_with_a_new_key_and_old_tokens_keep_working(
    auth: AuthHarness, new_verifier: Verifier
) -> None:
    user_id, email = await auth.user()
    before_verifier, _ = await new_verifier()  # watching since before the rotation
    old_token = await auth.login(email)
    old_kid = jwt.get_unverified_header(old_token)["kid"]
    old_key = _current_key(auth)
    assert old_key.kid == old_kid
    assert before_verifier.verify(old_token).user_id == uuid.UUID(user_id)

    rotated = await auth.call("keys.rotate", {}, token=auth.tokens["admin"])

    new_kid = rotated["kid"]
    assert new_kid != old_kid
    assert {old_kid, new_kid} <= set(rotated["keys"])
    jwks = await auth.published_jwks()
    published = {k["kid"] for k in jwks["keys"]}
    assert {old_kid, new_kid} <= published
    for jwk in jwks["keys"]:
        assert set(jwk) >= {"kty", "crv", "x", "kid", "alg"}
        assert "d" not in jwk  # never the private half

    new_token = await auth.login(email)
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid

    after_verifier, _ = await new_verifier()  # started after the rotation
    for verifier in (before_verifier, after_verifier, auth.app.verifier):
        await _wait_for(lambda v=verifier: new_kid in v.key_ids)  # type: ignore[misc]
        assert old_kid in verifier.key_ids
        assert str(verifier.verify(old_token).user_id) == user_id
        assert str(verifier.verify(new_token).user_id) == user_id
    assert (await auth.call("me", token=old_token))["id"] == user_id
    assert (await auth.call("me", token=new_token))["id"] == user_id

    # the old key verifies only until its tokens expire
    expired = _sign(
        old_key, _claims(user_id, iat=int(time.time()) - 120, exp=int(time.time()) - 60)
    )
    assert _refuses(before_verifier, expired)
    assert _refuses(after_verifier, expired)


async def test_every_auth_process_signs_with_the_rotated_key(auth: AuthHarness) -> None:
    """Every auth process (they share the rpc queue group) must sign with the current key.

    The keys module's policy is "exactly one key signs (the newest that is not retired)". A
    second auth process is started against the same database and bus; after a rotation, tokens
    signed by either process must carry the new key id. A process that keeps signing with the
    retired key issues tokens that stop verifying once that key leaves the JWKS.
    """
    user_id, _ = await auth.user()
    settings = auth.deps.settings.model_copy(update={"shutdown_grace_s": 2.0})
    second_app, second = build(settings, mailer=auth.deps.mailer)
    await second_app.start()
    try:
        await asyncio.wait_for(second_app.keys.ready.wait(), 10)
        rotated = await auth.call("keys.rotate", {}, token=auth.tokens["admin"])
        await asyncio.sleep(0.5)  # time for any process to notice

        kids = {}
        for name, deps in (("first", auth.deps), ("second", second)):
            token, _ = deps.signer.sign_access(uuid.UUID(user_id), ["member"], {})
            kids[name] = jwt.get_unverified_header(token)["kid"]
        assert kids == {"first": rotated["kid"], "second": rotated["kid"]}
    finally:
        await second_app.stop()
        # leave the session's service consistent with the schema whichever process rotated
        async with auth.deps.uow() as uow:
            await auth.deps.signer.load(uow.session)
            await uow.commit()
        await publish_jwks(auth.app.js, auth.deps.signer)
