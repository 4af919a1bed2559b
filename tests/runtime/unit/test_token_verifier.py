"""The verifier applies what the auth bucket says now: ended sessions and current project roles."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm

from compgrid_runtime.errors import Unauthorized
from compgrid_runtime.tokens import KeyWatcher, TokenVerifier

USER = uuid.uuid4()
PROJECT = uuid.uuid4()
KEY = Ed25519PrivateKey.generate()


def _token(**claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": "compgrid",
        "aud": "compgrid",
        "sub": str(USER),
        "typ": "access",
        "roles": ["member"],
        "projects": {str(PROJECT): "member"},
        "iat": now,
        "exp": now + 900,
        "jti": uuid.uuid4().hex,
        "sid": "session-1",
        **claims,
    }
    return jwt.encode(body, KEY, algorithm="EdDSA", headers={"kid": "k1"})


def _watched() -> tuple[TokenVerifier, KeyWatcher]:
    verifier = TokenVerifier()
    jwk = {**json.loads(OKPAlgorithm.to_jwk(KEY.public_key())), "kid": "k1", "alg": "EdDSA"}
    watcher = KeyWatcher(js=None, verifier=verifier)  # type: ignore[arg-type]
    watcher._apply("jwks", json.dumps({"keys": [jwk]}).encode(), "PUT")
    return verifier, watcher


def test_a_revoked_session_is_refused_until_its_tokens_have_expired() -> None:
    verifier, watcher = _watched()
    token = _token()
    other = _token(sid="session-2")

    watcher._apply("revoked.session-1", json.dumps({"until": time.time() + 60}).encode(), "PUT")

    with pytest.raises(Unauthorized):
        verifier.verify(token)
    assert verifier.verify(other).session_id == "session-2"
    watcher._apply("revoked.session-1", json.dumps({"until": time.time() - 1}).encode(), "PUT")
    assert verifier.verify(token).session_id == "session-1"  # expired entries are forgotten


def test_tokens_without_a_session_are_not_refused_by_revocations() -> None:
    verifier, watcher = _watched()
    watcher._apply("revoked.", json.dumps({"until": time.time() + 60}).encode(), "PUT")
    assert verifier.verify(_token(sid=None)).session_id is None


def test_current_project_roles_replace_the_claim() -> None:
    verifier, watcher = _watched()
    token = _token()
    new_project = uuid.uuid4()
    assert verifier.verify(token).project_role(PROJECT) == "member"

    watcher._apply(f"projects.{USER}", json.dumps({str(new_project): "pi"}).encode(), "PUT")

    principal = verifier.verify(token)
    assert principal.project_role(PROJECT) is None
    assert principal.project_role(new_project) == "pi"
    watcher._apply(f"projects.{USER}", None, "DEL")
    assert verifier.verify(token).project_role(PROJECT) == "member"


def test_unreadable_entries_change_nothing() -> None:
    verifier, watcher = _watched()
    token = _token()
    watcher._apply("revoked.session-1", b"not json", "PUT")
    watcher._apply(f"projects.{USER}", b"[1, 2]", "PUT")
    watcher._apply("projects.not-a-uuid", b"{}", "PUT")
    assert verifier.verify(token).project_role(PROJECT) == "member"
