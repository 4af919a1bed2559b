"""Gateway processes of their own for edge tests: each on a NATS server the test controls (the
test plays the services, and the auth service's key bucket) and the run's Redis, stopped when
the block ends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jwt
import nats
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm

from compgrid_runtime.embedded import free_port
from compgrid_runtime.tokens import JWKS_KEY, KEYS_BUCKET
from tests.harness.platform import answers

KEY = Ed25519PrivateKey.generate()
KID = "edge-tests"


def session_token() -> str:
    """An access token of a new session, signed with the key ``publish_keys`` publishes."""
    now = int(time.time())
    claims = {
        "iss": "compgrid",
        "aud": "compgrid",
        "sub": str(uuid.uuid4()),
        "typ": "access",
        "iat": now,
        "exp": now + 900,
        "jti": uuid.uuid4().hex,
        "sid": uuid.uuid4().hex,
    }
    return jwt.encode(claims, KEY, algorithm="EdDSA", headers={"kid": KID})


def publish_keys(nats_url: str) -> None:
    """Put the JWKS of ``KEY`` in the auth key bucket, as the auth service would (in a thread of
    its own, so it runs from sync fixtures whatever loop the tests use)."""

    async def publish() -> None:
        nc = await nats.connect(nats_url)
        try:
            kv = await nc.jetstream().create_key_value(bucket=KEYS_BUCKET, history=1)
            jwk = {**json.loads(OKPAlgorithm.to_jwk(KEY.public_key())), "kid": KID, "alg": "EdDSA"}
            await kv.put(JWKS_KEY, json.dumps({"keys": [jwk]}).encode())
        finally:
            await nc.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, publish()).result(timeout=30)


def wait_ready(url: str) -> None:
    """Wait until a gateway knows the signing keys (so tokens verify there)."""
    deadline = time.monotonic() + 60
    while httpx.get(f"{url}/readyz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, f"{url} never learned the signing keys"
        time.sleep(0.2)


@contextlib.contextmanager
def gateway(nats_url: str, redis_url: str, log: Path, **settings: str) -> Iterator[str]:
    """Run ``python -m compgrid_gateway`` with ``settings`` (``COMPGRID_GATEWAY_`` names
    without the prefix) and yield its base URL once it answers."""
    port = free_port()
    env = {
        **os.environ,
        "COMPGRID_GATEWAY_NATS_URL": nats_url,
        "COMPGRID_GATEWAY_REDIS_URL": redis_url,
        "COMPGRID_GATEWAY_API_PORT": str(port),
        "COMPGRID_GATEWAY_LOG_JSON": "false",
        **{f"COMPGRID_GATEWAY_{name.upper()}": value for name, value in settings.items()},
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "compgrid_gateway"], env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        assert answers(f"{url}/healthz", process, timeout_s=60), log.read_text()
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
