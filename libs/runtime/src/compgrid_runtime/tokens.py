"""Verifying CompGrid access tokens locally, in every service, from the published JWKS.

The auth service signs short-lived JWTs with Ed25519 (``alg=EdDSA``) and publishes its public
keys as a JWKS in the ``COMPGRID_AUTH`` key-value bucket, next to:

- ``disabled.<user id>``: one key per disabled account, whose tokens are all refused;
- ``revoked.<session id>``: a session (signed out) or an API token (revoked) whose access
  tokens (claim ``sid``) are refused; the value is the time after which every such token has
  expired anyway, so the entry can be forgotten;
- ``projects.<user id>``: the account's project roles as they are now. They replace the
  token's ``projects`` claim, so access follows membership changes made after the token was
  signed (docs/decisions/0013-current-access.md).

:class:`KeyWatcher` keeps a :class:`TokenVerifier` current, so keys rotate and accounts,
sessions and memberships change without a restart. Only EdDSA is accepted (never ``none``,
never an HMAC with the public key as secret); issuer, audience, expiry and token type are
checked; every failure is the same :class:`~compgrid_runtime.errors.Unauthorized`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import jwt
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError

from compgrid_runtime.errors import Unauthorized
from compgrid_runtime.logs import get_logger

log = get_logger(__name__)

KEYS_BUCKET = "COMPGRID_AUTH"
JWKS_KEY = "jwks"
DISABLED_PREFIX = "disabled."
REVOKED_PREFIX = "revoked."
PROJECTS_PREFIX = "projects."
ISSUER = "compgrid"
AUDIENCE = "compgrid"
ALGORITHMS = ["EdDSA"]


@dataclass(frozen=True)
class Principal:
    """Who is calling: a verified token's subject, roles and project memberships."""

    user_id: UUID
    roles: frozenset[str]
    projects: Mapping[UUID, str] = field(default_factory=dict)
    token_id: str = ""
    expires_at: datetime | None = None
    session_id: str | None = None

    def has_role(self, *roles: str) -> bool:
        """Return True when the caller holds any of the platform roles."""
        return not self.roles.isdisjoint(roles)

    def project_role(self, project_id: UUID) -> str | None:
        """Return the caller's role in a project, or None when not a member."""
        return self.projects.get(project_id)


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    """Build a principal from verified claims."""
    return Principal(
        user_id=UUID(claims["sub"]),
        roles=frozenset(claims.get("roles", ())),
        projects={UUID(k): v for k, v in claims.get("projects", {}).items()},
        token_id=str(claims["jti"]),
        expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        session_id=str(claims["sid"]) if claims.get("sid") else None,
    )


def project_roles(value: bytes) -> dict[UUID, str]:
    """Parse a ``projects.<user id>`` value: {project id: role} as JSON."""
    return {UUID(k): str(v) for k, v in json.loads(value).items()}


class TokenVerifier:
    """Verifies access tokens against the keys and disabled accounts it has been given."""

    def __init__(self, *, leeway_s: float = 5.0) -> None:
        self._keys: dict[str, Any] = {}
        self._disabled: set[UUID] = set()
        self._revoked: dict[str, float] = {}  # session id -> when its last token expires
        self._projects: dict[UUID, Mapping[UUID, str]] = {}
        self._leeway_s = leeway_s

    @property
    def key_ids(self) -> frozenset[str]:
        """Return the ids of the keys tokens may be signed with."""
        return frozenset(self._keys)

    def set_jwks(self, jwks: Mapping[str, Any]) -> None:
        """Replace the verification keys with those of a JWKS document."""
        keys = {}
        for jwk in jwks.get("keys", []):
            with contextlib.suppress(jwt.PyJWTError, KeyError, ValueError):
                keys[jwk["kid"]] = jwt.PyJWK.from_dict(jwk, algorithm="EdDSA").key
        self._keys = keys

    def set_disabled(self, user_id: UUID, disabled: bool) -> None:
        """Mark an account disabled (its tokens are refused) or enabled again."""
        if disabled:
            self._disabled.add(user_id)
        else:
            self._disabled.discard(user_id)

    def set_revoked(self, session_id: str, until: float | None) -> None:
        """Refuse a session's tokens until ``until`` (epoch seconds); None forgets it."""
        now = time.time()
        self._revoked = {s: t for s, t in self._revoked.items() if t > now}
        if until is None or until <= now:
            self._revoked.pop(session_id, None)
        elif session_id:
            self._revoked[session_id] = until

    def set_projects(self, user_id: UUID, projects: Mapping[UUID, str] | None) -> None:
        """Use an account's current project roles instead of its tokens' claim (None: the
        claim again)."""
        if projects is None:
            self._projects.pop(user_id, None)
        else:
            self._projects[user_id] = projects

    def verify(self, token: str) -> Principal:
        """Return the token's principal, or raise Unauthorized for any defect."""
        try:
            header = jwt.get_unverified_header(token)
            key = self._keys.get(str(header.get("kid")))
            if header.get("alg") not in ALGORITHMS or key is None:
                raise Unauthorized("invalid token")
            claims = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=self._leeway_s,
                options={"require": ["exp", "iat", "sub", "jti"]},
            )
            principal = principal_from_claims(claims)
        except (jwt.PyJWTError, ValueError, KeyError, TypeError) as exc:
            raise Unauthorized("invalid token") from exc
        if claims.get("typ") != "access" or principal.user_id in self._disabled:
            raise Unauthorized("invalid token")
        if principal.session_id and self._revoked.get(principal.session_id, 0.0) > time.time():
            raise Unauthorized("invalid token")
        current = self._projects.get(principal.user_id)
        return principal if current is None else replace(principal, projects=current)


class KeyWatcher:
    """Feeds a verifier from the auth bucket, waiting for the bucket when it is not there yet."""

    def __init__(self, js: JetStreamContext, verifier: TokenVerifier) -> None:
        self._js = js
        self._verifier = verifier
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self.jwks_changed = asyncio.Event()  # set on every new JWKS; whoever waits clears it

    def start(self) -> None:
        """Watch in the background."""
        self._task = asyncio.create_task(self._run(), name="jwks-watch")

    async def stop(self) -> None:
        """Stop watching."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self._watch()
            except (BucketNotFoundError, NotFoundError):
                await asyncio.sleep(0.5)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("key watch failed; retrying", error=repr(exc))
                await asyncio.sleep(1.0)

    async def _watch(self) -> None:
        kv = await self._js.key_value(KEYS_BUCKET)
        watcher = await kv.watchall()
        try:
            while True:
                entry = await watcher.updates(timeout=None)  # type: ignore[no-untyped-call]
                if entry is None:
                    self.ready.set()
                    continue
                self._apply(entry.key, entry.value, entry.operation)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    def _apply(self, key: str, value: bytes | None, operation: str | None) -> None:
        deleted = operation in ("DEL", "PURGE")
        if key == JWKS_KEY and value and not deleted:
            self._verifier.set_jwks(json.loads(value))
            self.jwks_changed.set()
        elif key.startswith(DISABLED_PREFIX):
            with contextlib.suppress(ValueError):
                self._verifier.set_disabled(UUID(key.removeprefix(DISABLED_PREFIX)), not deleted)
        elif key.startswith(REVOKED_PREFIX):
            with contextlib.suppress(ValueError, TypeError, KeyError):
                until = None if deleted or not value else float(json.loads(value)["until"])
                self._verifier.set_revoked(key.removeprefix(REVOKED_PREFIX), until)
        elif key.startswith(PROJECTS_PREFIX):
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                user_id = UUID(key.removeprefix(PROJECTS_PREFIX))
                roles = None if deleted or not value else project_roles(value)
                self._verifier.set_projects(user_id, roles)
