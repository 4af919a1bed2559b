"""Small pieces shared by the services' command lines."""

from __future__ import annotations

import argparse
from datetime import datetime


def moment(text: str) -> datetime:
    """An ISO 8601 time with its zone (``Z`` allowed), for ``argparse`` ``type=``."""
    found = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if found.tzinfo is None:
        raise argparse.ArgumentTypeError("give a time zone, e.g. 2026-11-01T00:00:00Z")
    return found
