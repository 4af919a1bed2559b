"""What auth keeps in its key bucket besides the keys: ended sessions and project roles.

Every service's verifier watches the bucket (see ``compgrid_runtime.tokens``): a
``revoked.<session id>`` entry refuses the session's access tokens until ``until``, when they
have all expired anyway and the entry is swept away; a ``projects.<user id>`` entry gives the
account's project roles as they are now, in place of its tokens' claim.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from nats.js import JetStreamContext

from compgrid_auth.adapters.keys import key_bucket
from compgrid_runtime.tokens import KEYS_BUCKET, PROJECTS_PREFIX, REVOKED_PREFIX


async def publish_revoked(js: JetStreamContext, session_id: UUID, until: float) -> None:
    """Refuse the access tokens of a session (or API token) until ``until`` (epoch seconds)."""
    kv = await key_bucket(js)
    await kv.put(f"{REVOKED_PREFIX}{session_id}", json.dumps({"until": until}).encode())


async def publish_projects(js: JetStreamContext, user_id: UUID, projects: dict[str, str]) -> None:
    """Publish an account's current project roles ({project id: role})."""
    kv = await key_bucket(js)
    await kv.put(f"{PROJECTS_PREFIX}{user_id}", json.dumps(projects).encode())


async def sweep_revoked(js: JetStreamContext, now: float) -> int:
    """Remove revocations whose tokens have all expired; return how many were removed.

    The entries are purged from the bucket's stream without a delete marker: verifiers forget
    them on their own once ``until`` has passed.
    """
    kv = await key_bucket(js)
    watcher = await kv.watch(f"{REVOKED_PREFIX}>", ignore_deletes=True)
    expired: list[str] = []
    try:
        while (entry := await watcher.updates(timeout=5)) is not None:
            if _until(entry.value) <= now:
                expired.append(entry.key)
    finally:
        await watcher.stop()
    for key in expired:
        await js.purge_stream(f"KV_{KEYS_BUCKET}", subject=f"$KV.{KEYS_BUCKET}.{key}")
    return len(expired)


def _until(value: Any) -> float:
    try:
        return float(json.loads(value)["until"])
    except (ValueError, TypeError, KeyError):
        return 0.0  # unreadable: nothing to keep
