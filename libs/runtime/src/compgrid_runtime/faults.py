"""Fault points for crash tests: a named point kills its own process with SIGKILL.

``COMPGRID_FAULT_POINT=<name>`` arms one point; ``COMPGRID_FAULT_AFTER=<n>`` lets it pass
``n`` times first. Points are inert in production mode and cost one dict lookup otherwise.
"""

from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Kill this process at once when the point ``name`` is armed and its count is reached."""
    if os.environ.get("COMPGRID_FAULT_POINT") != name:
        return
    if os.environ.get("COMPGRID_ENVIRONMENT", "development") == "production":
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] > int(os.environ.get("COMPGRID_FAULT_AFTER", "0")):
        os.kill(os.getpid(), signal.SIGKILL)
