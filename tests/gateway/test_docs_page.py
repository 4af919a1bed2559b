"""The API documentation page in a real browser (Debian's Chromium through Playwright): it
lists the operations from files the gateway serves itself, under its own Content-Security-
Policy, and asks nothing of any other origin."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from playwright.async_api import Browser, async_playwright

from compgrid_runtime.embedded import EmbeddedNats
from tests.gateway.gateways import gateway
from tests.harness.servers import Servers

pytestmark = [pytest.mark.browser, pytest.mark.nats, pytest.mark.redis, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def docs_gateway(real: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedNats(tmp_path_factory.mktemp("docs-nats")).start()
    log = tmp_path_factory.mktemp("docs") / "gateway.log"
    try:
        with gateway(server.url, real.redis_url, log) as url:
            yield url
    finally:
        server.stop()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox"], headless=True
        )
        yield launched
        await launched.close()


async def test_the_docs_page_lists_the_operations(docs_gateway: str, browser: Browser) -> None:
    page = await browser.new_page()
    problems: list[str] = []
    elsewhere: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("response", lambda r: problems.append(r.url) if r.status >= 400 else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on(
        "request",
        lambda r: None if r.url.startswith(docs_gateway) else elsewhere.append(r.url),
    )
    await page.goto(f"{docs_gateway}/api/v1/docs")
    summaries = page.locator(".opblock-summary")
    await summaries.nth(50).wait_for(timeout=30_000)
    assert await summaries.count() > 50
    assert await page.locator(".info .title").first.inner_text() != ""
    assert problems == []  # nothing blocked by the policy, no script error
    assert elsewhere == []
    await page.close()


async def test_the_docs_page_allows_exactly_its_own_files(docs_gateway: str) -> None:
    async with httpx.AsyncClient(base_url=docs_gateway) as http:
        page = await http.get("/api/v1/docs")
        script = await http.get("/api/v1/docs/assets/init.js")
        api = await http.get("/api/v1/openapi.json")
    policies = page.headers.get_list("content-security-policy")
    assert len(policies) == 1
    policy = policies[0]
    assert "script-src 'self';" in policy
    assert "unsafe-inline" not in policy
    assert "unsafe-eval" not in policy
    assert "<script>" not in page.text  # every script is a served file
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert "default-src 'none'" in api.headers["content-security-policy"]
