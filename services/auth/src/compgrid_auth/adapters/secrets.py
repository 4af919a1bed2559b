"""Opaque secrets handed to people (refresh, API, reset and invitation tokens).

Only a SHA-256 of each secret is stored; the secret itself is shown once. Secrets carry 256
bits from the OS's CSPRNG, so a fast hash is enough (nothing to brute-force).
"""

from __future__ import annotations

import hashlib
import secrets


def new_secret(prefix: str) -> str:
    """Return a fresh secret such as ``cgr_...``."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def digest(secret: str) -> str:
    """Return the stored form of a secret."""
    return hashlib.sha256(secret.encode()).hexdigest()
