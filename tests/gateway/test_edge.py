"""The gateway process at the edge, on a NATS server of its own where the test plays the
services: answers and refusals pass through as problems, a service that is not running is a
503, one that does not answer in time a 504 (never a hang), and the limits on rates, sizes
and origins hold."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from compgrid_runtime.embedded import EmbeddedNats, free_port
from tests.gateway.gateways import publish_keys, session_token, wait_ready
from tests.harness.platform import answers
from tests.harness.servers import Servers

pytestmark = [pytest.mark.nats, pytest.mark.redis, pytest.mark.slow]

RPC_TIMEOUT_S = 0.5


@dataclass
class Edge:
    """The gateway process and the NATS server it talks to."""

    url: str
    nats_url: str


def _session() -> dict[str, str]:
    """Authorization of a new session (its own rate limit)."""
    return {"Authorization": f"Bearer {session_token()}"}


@pytest.fixture(scope="module")
def edge(real: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    server = EmbeddedNats(tmp_path_factory.mktemp("edge-nats")).start()
    publish_keys(server.url)  # tokens of sessions verify: each counts against its own limit
    port = free_port()
    env = {
        **os.environ,
        "COMPGRID_GATEWAY_NATS_URL": server.url,
        "COMPGRID_GATEWAY_REDIS_URL": real.redis_url,
        "COMPGRID_GATEWAY_API_PORT": str(port),
        "COMPGRID_GATEWAY_RPC_TIMEOUT_S": str(RPC_TIMEOUT_S),
        "COMPGRID_GATEWAY_RATE_LIMIT_PER_S": "1",
        "COMPGRID_GATEWAY_RATE_LIMIT_BURST": "5",
        "COMPGRID_GATEWAY_RATE_LIMIT_PREFIX": f"{real.redis_prefix}edge:rate",
        "COMPGRID_GATEWAY_MAX_BODY_BYTES": "2048",
        "COMPGRID_GATEWAY_CORS_ORIGINS": '["https://ui.example"]',
        "COMPGRID_GATEWAY_LOG_JSON": "false",
    }
    log = Path(tmp_path_factory.mktemp("edge")) / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "compgrid_gateway"], env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        assert answers(f"{url}/healthz", process, timeout_s=60), log.read_text()
        wait_ready(url)
        yield Edge(url, server.url)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        server.stop()


@pytest.fixture
async def bus(edge: Edge) -> AsyncIterator[NatsClient]:
    client = await nats.connect(edge.nats_url)
    yield client
    await client.close()


def _assert_problem(reply: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = reply.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == f"https://compgrid.example/problems/{code}"
    assert body["request_id"] == reply.headers["x-request-id"]
    return body


async def test_a_service_that_is_not_running_is_a_503_at_once(edge: Edge) -> None:
    async with httpx.AsyncClient(base_url=edge.url) as http:
        started = time.monotonic()
        reply = await http.get("/api/v1/images", headers=_session())
    assert time.monotonic() - started < RPC_TIMEOUT_S + 2
    body = _assert_problem(reply, 503, "service_unavailable")
    assert "inventory" in str(body["detail"])


async def test_a_service_that_does_not_answer_is_a_504_after_the_timeout(
    edge: Edge, bus: NatsClient
) -> None:
    async def silent(msg: Msg) -> None:
        return None  # listens, never answers

    await bus.subscribe("rpc.inventory.datacenters.list", cb=silent)
    await bus.flush()
    async with httpx.AsyncClient(base_url=edge.url) as http:
        started = time.monotonic()
        reply = await http.get("/api/v1/datacenters", headers=_session())
        took = time.monotonic() - started
    assert RPC_TIMEOUT_S <= took < RPC_TIMEOUT_S + 2
    body = _assert_problem(reply, 504, "timeout")
    assert "did not answer within 0.5 s" in str(body["detail"])


async def test_answers_and_refusals_of_the_owning_service_pass_through(
    edge: Edge, bus: NatsClient
) -> None:
    seen: list[dict[str, object]] = []

    async def answer(msg: Msg) -> None:
        request = json.loads(msg.data)
        seen.append(request)
        if request["body"].get("include_retired"):
            error = {"status": 409, "code": "type_retired", "message": "no", "field": "name"}
            await msg.respond(json.dumps({"ok": False, "error": error}).encode())
        else:
            await msg.respond(json.dumps({"ok": True, "data": [{"name": "small"}]}).encode())

    await bus.subscribe("rpc.inventory.types.list", cb=answer)
    await bus.flush()
    token = session_token()
    headers = {"Authorization": f"Bearer {token}", "X-Request-ID": "req-42"}
    async with httpx.AsyncClient(base_url=edge.url) as http:
        ok = await http.get("/api/v1/instance-types", headers=headers)
        refused = await http.get(
            "/api/v1/instance-types", params={"include_retired": "true"}, headers=headers
        )
    assert ok.status_code == 200
    assert ok.json() == [{"name": "small"}]
    body = _assert_problem(refused, 409, "type_retired")
    assert body["field"] == "name"
    assert body["detail"] == "no"
    # the caller's token, address and request id travel to the service, which decides
    assert seen[0]["token"] == token
    assert seen[0]["request_id"] == "req-42"
    assert seen[0]["client_address"] == "127.0.0.1"
    assert seen[1]["body"] == {"include_retired": True}


async def test_rate_limit_is_per_session(edge: Edge) -> None:
    caller = _session()
    async with httpx.AsyncClient(base_url=edge.url) as http:
        statuses = [
            (await http.get("/api/v1/images", headers=caller)).status_code for _ in range(6)
        ]
        throttled = await http.get("/api/v1/images", headers=caller)
        other = await http.get("/api/v1/images", headers=_session())
    assert statuses[:5] == [503] * 5
    assert statuses[5] == 429
    _assert_problem(throttled, 429, "too_many_requests")
    assert int(throttled.headers["retry-after"]) >= 1
    assert other.status_code == 503  # another session has its own bucket


async def test_bodies_over_the_limit_are_refused_even_without_a_length(edge: Edge) -> None:
    big = json.dumps({"name": "x" * 3000}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 500):
            yield big[i : i + 500]

    caller = _session()
    async with httpx.AsyncClient(base_url=edge.url) as http:
        sized = await http.post(
            "/api/v1/images",
            content=big,
            headers={**caller, "Content-Type": "application/json"},
        )
        streamed = await http.post(
            "/api/v1/images",
            content=chunks(),
            headers={**caller, "Content-Type": "application/json"},
        )
    assert "content-length" not in streamed.request.headers
    _assert_problem(sized, 413, "too_large")
    _assert_problem(streamed, 413, "too_large")


async def test_security_headers_and_request_ids(edge: Edge) -> None:
    async with httpx.AsyncClient(base_url=edge.url) as http:
        kept = await http.get("/api/v1/images", headers={"X-Request-ID": "abc.123"})
        replaced = await http.get("/api/v1/images", headers={"X-Request-ID": "bad id;drop"})
    assert kept.headers["x-request-id"] == "abc.123"
    assert replaced.headers["x-request-id"] != "bad id;drop"
    assert len(replaced.headers["x-request-id"]) == 32
    for reply in (kept, replaced):
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert reply.headers["x-frame-options"] == "DENY"
        assert reply.headers["cache-control"] == "no-store"
        assert "default-src 'none'" in reply.headers["content-security-policy"]


async def test_cors_only_for_allowed_origins(edge: Edge) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,idempotency-key",
    }
    async with httpx.AsyncClient(base_url=edge.url) as http:
        allowed = await http.options(
            "/api/v1/instances", headers={"Origin": "https://ui.example", **preflight}
        )
        refused = await http.options(
            "/api/v1/instances", headers={"Origin": "https://evil.example", **preflight}
        )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://ui.example"
    assert "idempotency-key" in allowed.headers["access-control-allow-headers"].lower()
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers


async def test_gateway_never_hangs_on_many_silent_requests(edge: Edge, bus: NatsClient) -> None:
    async def silent(msg: Msg) -> None:
        return None

    await bus.subscribe("rpc.billing.runs.list", cb=silent)
    await bus.flush()
    async with httpx.AsyncClient(base_url=edge.url, timeout=10) as http:
        started = time.monotonic()
        replies = await asyncio.gather(
            *(http.get("/api/v1/billing/runs", headers=_session()) for _ in range(20))
        )
    assert [r.status_code for r in replies] == [504] * 20
    assert time.monotonic() - started < RPC_TIMEOUT_S + 3


async def test_documents_arrive_as_files(edge: Edge, bus: NatsClient) -> None:
    pdf = b"%PDF-1.7\n\x00\xff binary \x01"
    documents = {
        "rpc.billing.invoices.pdf": {
            "filename": "CG-2026-000001.pdf",
            "media_type": "application/pdf",
            "content": base64.b64encode(pdf).decode(),
            "encoding": "base64",
        },
        "rpc.billing.invoices.csv": {
            "filename": "CG-2026-000001.csv",
            "media_type": "text/csv",
            "content": "position,amount\n1,12.50\n",
            "encoding": "utf-8",
        },
    }

    async def answer(msg: Msg) -> None:
        data = documents[msg.subject]
        await msg.respond(json.dumps({"ok": True, "data": data}).encode())

    for subject in documents:
        await bus.subscribe(subject, cb=answer)
    await bus.flush()
    invoice = "01a2276b-b620-723f-9769-f66add806d50"
    caller = _session()
    async with httpx.AsyncClient(base_url=edge.url) as http:
        got_pdf = await http.get(f"/api/v1/invoices/{invoice}/pdf", headers=caller)
        got_csv = await http.get(f"/api/v1/invoices/{invoice}/csv", headers=caller)
    assert got_pdf.status_code == 200
    assert got_pdf.content == pdf
    assert got_pdf.headers["content-type"] == "application/pdf"
    assert got_pdf.headers["content-disposition"] == 'attachment; filename="CG-2026-000001.pdf"'
    assert got_csv.text == "position,amount\n1,12.50\n"
    assert got_csv.headers["content-type"].startswith("text/csv")
