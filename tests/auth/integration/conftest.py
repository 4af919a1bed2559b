"""The auth harness lives in ``tests/harness/auth.py``; its names are kept importable here."""

from tests.harness.auth import ADMIN_EMAIL, ADMIN_PASSWORD, PASSWORD, AuthHarness, Inbox

__all__ = ["ADMIN_EMAIL", "ADMIN_PASSWORD", "PASSWORD", "AuthHarness", "Inbox"]
