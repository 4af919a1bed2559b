"""Every shell example in ``docs/api.md`` runs as written against the platform ``just dev``
starts: each fenced ``bash`` block in order, in one config directory (so a login in one block
holds for the next), with ``set -euo pipefail``. The only change: the platform of the test run
listens where ``just dev`` would listen on 8000."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.gateway.conftest import Stack
from tests.harness.platform import ROOT

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis, pytest.mark.slow]

DOC = ROOT / "docs" / "api.md"
_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)
_DEV_ADDRESS = re.compile(r"\b(?:localhost|127\.0\.0\.1):8000\b")


def examples() -> list[str]:
    """The ``bash`` blocks of the API guide, in order."""
    return _BLOCK.findall(DOC.read_text(encoding="utf-8"))


def test_the_guide_has_examples() -> None:
    blocks = examples()
    assert len(blocks) >= 2
    assert any("compgrid instances request" in b for b in blocks)
    assert not any(re.search(r"<[a-z][a-z ]*>", b) for b in blocks), "placeholders do not run"


def test_every_example_in_the_api_guide_runs(stack: Stack, tmp_path: Path) -> None:
    address = urlsplit(stack.base_url).netloc
    env = {
        **os.environ,
        "COMPGRID_URL": stack.base_url,
        "COMPGRID_CONFIG_DIR": str(tmp_path / "config"),
        "UV_NO_SYNC": "1",  # the workspace is installed already
        "COLUMNS": "200",
    }
    env.pop("COMPGRID_API_TOKEN", None)
    for number, block in enumerate(examples(), 1):
        script = "set -euo pipefail\n" + _DEV_ADDRESS.sub(address, block)
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, (
            f"example {number} of {DOC.name} failed ({done.returncode}):\n{block}\n"
            f"stdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-2000:]}"
        )
