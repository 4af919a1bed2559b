"""Small steps the HTTP tests share: the demo project, requesting instances, reading events."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx

from tests.gateway.conftest import Stack


async def demo_grant(
    http: httpx.AsyncClient, stack: Stack, who: str = "researcher"
) -> dict[str, Any]:
    """The demo project's budget code as ``who`` sees it."""
    reply = await http.get("/budget-codes", headers=stack.headers(who))
    assert reply.status_code == 200, reply.text
    codes: list[dict[str, Any]] = reply.json()
    return next(c for c in codes if c["code"] == "DEMO-GRANT-1")


def request_body(grant: dict[str, Any], name: str | None = None, **extra: Any) -> dict[str, Any]:
    """A request for a small demo instance charged to ``grant``."""
    return {
        "name": name or f"vm-{uuid.uuid4().hex[:8]}",
        "project_id": grant["project_id"],
        "budget_code_id": grant["id"],
        "instance_type": "small",
        "image": "ubuntu-24.04",
        **extra,
    }


async def events(
    http: httpx.AsyncClient, headers: dict[str, str], **params: str
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """The server-sent events of ``/events/instances`` as (event, data) pairs."""
    async with http.stream("GET", "/events/instances", headers=headers, params=params) as reply:
        assert reply.status_code == 200, await reply.aread()
        assert reply.headers["content-type"].startswith("text/event-stream")
        name, data = "message", ""
        async for line in reply.aiter_lines():
            if line.startswith("event:"):
                name = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                data += line.removeprefix("data:").strip()
            elif line == "" and data:
                yield name, json.loads(data)
                name, data = "message", ""
