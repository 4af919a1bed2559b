"""``python -m compgrid_gateway.openapi PATH``: write the API's OpenAPI document (``just
openapi``); a test fails when the committed one differs from what the code describes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from compgrid_gateway.app import create_app
from compgrid_gateway.config import Settings


def document() -> dict[str, Any]:
    """The OpenAPI document of the gateway as the code describes it."""
    schema: dict[str, Any] = create_app(Settings()).openapi()
    return schema


def render() -> str:
    """The document as committed: sorted keys, two-space indent, final newline."""
    return json.dumps(document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(render(), encoding="utf-8")
