"""Two gateway processes sharing one Redis share the rate limits: a caller gets the limit
once across the replicas, not once per replica; made-up tokens get their address's limit."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from itertools import cycle

import httpx
import pytest

from compgrid_runtime.embedded import EmbeddedNats
from tests.gateway.gateways import gateway, publish_keys, session_token, wait_ready
from tests.harness.servers import Servers

pytestmark = [pytest.mark.nats, pytest.mark.redis, pytest.mark.slow]

BURST = 6


def _token() -> dict[str, str]:
    """Authorization of a new session."""
    return {"Authorization": f"Bearer {session_token()}"}


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A NATS where no service answers, holding the signing keys as the auth service would."""
    server = EmbeddedNats(tmp_path_factory.mktemp("replicas-nats")).start()
    try:
        publish_keys(server.url)
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def replicas(
    real: Servers, bus: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[str]]:
    """Two gateways on one NATS (where no service answers) and the run's Redis."""
    logs = tmp_path_factory.mktemp("replicas")
    limits = {
        "rate_limit_per_s": "0.2",  # a window of 30 s: nothing frees up during the test
        "rate_limit_burst": str(BURST),
        "rate_limit_prefix": f"{real.redis_prefix}replicas:{uuid.uuid4().hex}",
    }
    with (
        gateway(bus, real.redis_url, logs / "a.log", **limits) as a,
        gateway(bus, real.redis_url, logs / "b.log", **limits) as b,
    ):
        wait_ready(a)
        wait_ready(b)
        yield [a, b]


async def _statuses(urls: list[str], count: int, headers: dict[str, str]) -> list[int]:
    """Send ``count`` requests, taking turns over the replicas."""
    statuses = []
    async with httpx.AsyncClient(timeout=10) as http:
        for _, url in zip(range(count), cycle(urls), strict=False):
            statuses.append((await http.get(f"{url}/api/v1/images", headers=headers)).status_code)
    return statuses


async def test_a_session_gets_the_limit_once_across_replicas(replicas: list[str]) -> None:
    token = _token()
    statuses = await _statuses(replicas, 2 * BURST, token)
    assert statuses[:BURST] == [503] * BURST  # no inventory here: the limit let them through
    assert statuses[BURST:] == [429] * BURST
    async with httpx.AsyncClient(timeout=10) as http:
        refused = await http.get(f"{replicas[1]}/api/v1/images", headers=token)
        other = await http.get(f"{replicas[1]}/api/v1/images", headers=_token())
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "too_many_requests"
    assert 1 <= int(refused.headers["retry-after"]) <= 30
    assert refused.headers["ratelimit-remaining"] == "0"
    assert other.status_code == 503  # another session counts on its own


async def test_a_replica_counts_what_the_other_let_through(replicas: list[str]) -> None:
    token = _token()
    assert await _statuses(replicas[:1], BURST - 1, token) == [503] * (BURST - 1)
    async with httpx.AsyncClient(timeout=10) as http:
        last = await http.get(f"{replicas[1]}/api/v1/images", headers=token)
        over = await http.get(f"{replicas[1]}/api/v1/images", headers=token)
    assert last.status_code == 503
    assert last.headers["ratelimit-remaining"] == "0"
    assert over.status_code == 429


async def test_made_up_tokens_count_against_their_address(replicas: list[str]) -> None:
    statuses = []
    async with httpx.AsyncClient(timeout=10) as http:
        for _, url in zip(range(2 * BURST), cycle(replicas), strict=False):
            made_up = {"Authorization": f"Bearer {uuid.uuid4().hex}"}  # a new one every time
            statuses.append((await http.get(f"{url}/api/v1/images", headers=made_up)).status_code)
        anonymous = await http.get(f"{replicas[0]}/api/v1/images")
        signed_in = await http.get(f"{replicas[0]}/api/v1/images", headers=_token())
    assert statuses == [503] * BURST + [429] * BURST
    assert anonymous.status_code == 429  # the address's limit, as without a token
    assert signed_in.status_code == 503  # a real session is not held back by it
