"""Token verifications per second with the shared verifier, against raw PyJWT, and login p50.

Ours: ``TokenVerifier.verify`` — what every service and the gateway run on each request — fed
the JWKS by a ``KeyWatcher`` from the NATS KV bucket, as a service other than auth would be.
It checks the header's key id and algorithm, the EdDSA signature, exp/iat/iss/aud, the token
type and the disabled-accounts set, and builds the principal.

Baseline, same run, same token: ``jwt.decode`` of PyJWT with the Ed25519 public key already in
hand, the same algorithm list, audience and issuer — signature and claims only.

Rounds alternate (raw, ours, raw, ours …) so that both see the same machine state; each figure
is the median of the rounds. ``login_p50_ms`` is the median of complete ``login`` calls over
NATS request/reply (throttle check in Redis, user lookup, argon2id verify at the chosen
parameters in a worker thread, refresh token row, signed access token); ``argon2_verify_ms`` is
the hash check alone, for context.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid

import jwt
import nats

from bench.common import bench_servers, percentile, report
from compgrid_auth.adapters.hashing import PasswordHasher
from compgrid_auth.bootstrap import build
from compgrid_auth.config import Settings
from compgrid_runtime.migrations import upgrade
from compgrid_runtime.rpc import call
from compgrid_runtime.tokens import ALGORITHMS, AUDIENCE, ISSUER, KeyWatcher, TokenVerifier

VERIFICATIONS = int(os.environ.get("COMPGRID_BENCH_VERIFICATIONS", "20000"))
ROUNDS = 5
LOGINS = int(os.environ.get("COMPGRID_BENCH_LOGINS", "50"))
ADMIN = "bench-admin@example.org"
PASSWORD = "bench password, long enough"


def rate(verify: object, token: str, count: int) -> float:
    """Return verifications per second of ``verify(token)`` over ``count`` calls."""
    assert callable(verify)
    started = time.perf_counter()
    for _ in range(count):
        verify(token)
    return count / (time.perf_counter() - started)


async def main() -> None:
    """Run the benchmark and print its JSON line."""
    redis_url = os.environ.get("COMPGRID_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    async with bench_servers() as (database_url, nats_url):
        await asyncio.to_thread(upgrade, "compgrid_auth", database_url)
        settings = Settings(
            database_url=database_url,
            nats_url=nats_url,
            redis_url=redis_url,
            redis_prefix=f"bench:{uuid.uuid4().hex[:8]}:",
            admin_email=ADMIN,
            admin_password=PASSWORD,
            log_level="WARNING",
        )
        app, _ = build(settings)
        await app.start()
        client = await nats.connect(nats_url)
        try:
            latencies = []
            pair: dict[str, str] = {}
            for i in range(LOGINS):
                started = time.perf_counter()
                pair = await call(
                    client,
                    "auth",
                    "login",
                    {"email": ADMIN, "password": PASSWORD},
                    client_address=f"192.0.2.{i % 200}",
                )
                latencies.append((time.perf_counter() - started) * 1000)
            token = pair["access_token"]

            # A verifier as another service has it: keys from the KV bucket, own connection.
            verifier = TokenVerifier()
            watcher = KeyWatcher(client.jetstream(), verifier)
            watcher.start()
            await asyncio.wait_for(watcher.ready.wait(), 10)
            principal = verifier.verify(token)
            kid = jwt.get_unverified_header(token)["kid"]
            jwks = await app.js.key_value("COMPGRID_AUTH")
            entry = (await jwks.get("jwks")).value
            assert entry is not None
            published = jwt.PyJWKSet.from_json(entry.decode())
            public_key = published[kid].key

            def raw(t: str) -> dict[str, object]:
                return jwt.decode(
                    t, public_key, algorithms=ALGORITHMS, audience=AUDIENCE, issuer=ISSUER
                )

            assert raw(token)["sub"] == str(principal.user_id)
            rate(raw, token, 500)  # warm both paths
            rate(verifier.verify, token, 500)
            ours, baseline = [], []
            for _ in range(ROUNDS):
                baseline.append(rate(raw, token, VERIFICATIONS // ROUNDS))
                ours.append(rate(verifier.verify, token, VERIFICATIONS // ROUNDS))
            await watcher.stop()

            hash_ms = []
            hasher = PasswordHasher()
            stored = await hasher.hash(PASSWORD)
            for _ in range(20):
                started = time.perf_counter()
                assert await hasher.verify(stored, PASSWORD)
                hash_ms.append((time.perf_counter() - started) * 1000)
        finally:
            await client.close()
            await app.stop()
    value, base = statistics.median(ours), statistics.median(baseline)
    report(
        "auth",
        value,
        "verifications/s",
        base,
        value / base,
        verifications=VERIFICATIONS,
        rounds=ROUNDS,
        login_p50_ms=round(percentile(latencies, 50), 2),
        login_p95_ms=round(percentile(latencies, 95), 2),
        logins=LOGINS,
        argon2_verify_ms=round(statistics.median(hash_ms), 2),
        argon2="m=19MiB,t=2,p=1",
    )


if __name__ == "__main__":
    asyncio.run(main())
