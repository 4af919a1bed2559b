"""Property-based requests over the whole OpenAPI document against the running platform: every
answer must be documented (status, media type, body schema) and none may be a server error.

Schemathesis generates each operation's cases from the committed document (valid and invalid
ones, plus its boundary-value coverage cases), once as the admin and once, with fewer cases, as
the demo researcher. The run is bounded and derandomised with a fixed seed, so CI sends the same
requests every time. Left out: the event stream (it never ends) and key rotation (it would
change the keys every other test relies on). Generated ids are random, so user changes cannot
reach the demo people; the fuzz tokens come from sign-ins of their own, and platform settings
and webhooks the run creates are put back afterwards.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.gateway.conftest import Stack

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis, pytest.mark.slow]

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
SEED = 20261129
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Made-up logins from the fuzzer count against this documentation address (RFC 5737), never
# against the address every other test signs in from.
FUZZ_ADDRESS = "198.51.100.77"
USAGE = "/api/v1/instances/{instance_id}/usage"
APPROVAL_LIMITS = {"/api/v1/projects": 10**14, "/api/v1/projects/{project_id}/policy": 10**12}


def _schema(max_examples: int, *, coverage: bool) -> Any:
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {"max-examples": max_examples, "deterministic": True, "database": "none"},
            "phases": {"coverage": {"enabled": coverage}, "stateful": {"enabled": False}},
        }
    )
    schema: Any = schemathesis.openapi.from_path(DOCUMENT, config=config)
    return schema.exclude(path=["/api/v1/events/instances", "/api/v1/admin/keys/rotate"])


ADMIN = _schema(25, coverage=True)
RESEARCHER = _schema(8, coverage=True)
# Each token may send 50 requests a second (200 at once); the fuzzer sends more, so it spreads
# them over several sign-ins instead of spending the run on 429s.
SIGN_INS = 10


@pytest.fixture(scope="module")
def fuzz_headers(stack: Stack) -> Iterator[dict[str, Iterator[dict[str, str]]]]:
    """Headers of the fuzz identities, a different sign-in each time; platform settings and
    webhooks are put back after the run."""
    headers = {
        who: [
            {"Authorization": f"Bearer {stack.login(who)}", "X-Forwarded-For": FUZZ_ADDRESS}
            for _ in range(SIGN_INS)
        ]
        for who in ("admin", "researcher")
    }
    with httpx.Client(base_url=stack.api, headers=headers["admin"][0], timeout=30) as admin:
        settings = admin.get("/settings").json()
        hooks = {h["id"] for h in admin.get("/webhooks").json()["webhooks"]}
        yield {who: itertools.cycle(each) for who, each in headers.items()}
        admin.put("/settings", json=settings).raise_for_status()
        for hook in admin.get("/webhooks").json()["webhooks"]:
            if hook["id"] not in hooks:
                admin.delete(f"/webhooks/{hook['id']}")


@ADMIN.parametrize()
def test_answers_the_admin_as_documented(
    case: Case, stack: Stack, fuzz_headers: dict[str, Iterator[dict[str, str]]]
) -> None:
    case.call_and_validate(
        base_url=stack.base_url, headers=next(fuzz_headers["admin"]), checks=CHECKS, timeout=90
    )


@RESEARCHER.parametrize()
def test_answers_the_researcher_as_documented(
    case: Case, stack: Stack, fuzz_headers: dict[str, Iterator[dict[str, str]]]
) -> None:
    case.call_and_validate(
        base_url=stack.base_url,
        headers=next(fuzz_headers["researcher"]),
        checks=CHECKS,
        timeout=90,
    )
