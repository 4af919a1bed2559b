"""The API's documentation page: Swagger UI from files the gateway serves itself.

The assets are swagger-ui-dist's files, pinned and committed under ``static/swagger-ui`` (see
its ``VERSION``), so the page works offline and under a Content-Security-Policy that allows
exactly those files: scripts, styles and the document from this origin, no inline script (the
page starts Swagger UI from ``init.js``), images from this origin or ``data:``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

ASSETS = Path(__file__).parent / "static" / "swagger-ui"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} API</title>
<link rel="icon" type="image/png" href="docs/assets/favicon-32x32.png">
<link rel="stylesheet" href="docs/assets/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/assets/swagger-ui-bundle.js"></script>
<script src="docs/assets/init.js"></script>
</body>
</html>
"""


def install(app: FastAPI, prefix: str) -> None:
    """Serve the documentation page at ``{prefix}/docs`` and its assets below it."""
    page = PAGE.format(title=app.title)

    @app.get(f"{prefix}/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        """The interactive API documentation."""
        return HTMLResponse(page, headers={"Content-Security-Policy": CSP})

    app.mount(f"{prefix}/docs/assets", StaticFiles(directory=ASSETS), name="docs-assets")
