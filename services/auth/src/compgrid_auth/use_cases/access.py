"""Keeping every verifier's view of access current: project roles and ended sessions.

Project roles are published right after a membership change commits, so the very next request
anywhere sees them; a consumer of auth's own ``MembershipChanged`` events publishes them again,
so a publish lost to a crash or a bus outage still happens. Each publish reads the roles under
a per-account advisory lock and writes them before releasing it, so a slower publisher never
overwrites a newer reading with an older one.

A revocation is published inside the transaction that ends the session, before it commits: if
the bus cannot take it, the session does not end and the caller is told.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from uuid import UUID

from sqlalchemy import text

from compgrid_auth.adapters.published import publish_projects, publish_revoked, sweep_revoked
from compgrid_auth.adapters.repository import user_projects
from compgrid_auth.use_cases.deps import Deps
from compgrid_events.auth import MembershipChanged
from compgrid_runtime.app import ServiceApp
from compgrid_runtime.logs import get_logger

log = get_logger(__name__)

SWEEP_INTERVAL_S = 60.0
REVOCATION_MARGIN_S = 60.0
"""Kept past the access-token lifetime to cover the verifiers' leeway and clock skew."""


async def sync_projects(deps: Deps, user_id: UUID) -> None:
    """Publish the account's project roles as the database has them now."""
    async with deps.uow() as uow:
        await uow.session.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"auth.projects.{user_id}"}
        )
        projects = await user_projects(uow.session, user_id)
        await publish_projects(deps.js(), user_id, projects)


async def publish_access(deps: Deps, user_ids: Iterable[UUID]) -> None:
    """After a membership change: publish the accounts' roles now (the consumer retries)."""
    for user_id in user_ids:
        try:
            await sync_projects(deps, user_id)
        except Exception as exc:
            log.warning("project roles not published yet", user_id=str(user_id), error=repr(exc))


async def on_membership_changed(deps: Deps, event: MembershipChanged) -> None:
    """Publish the roles of the account whose membership changed."""
    await sync_projects(deps, event.user_id)


async def revoke_session(deps: Deps, session_id: UUID) -> None:
    """Refuse the session's access tokens everywhere until the last of them has expired."""
    until = time.time() + deps.settings.access_ttl_s + REVOCATION_MARGIN_S
    await publish_revoked(deps.js(), session_id, until)


async def sweep_revocations(deps: Deps, _: ServiceApp) -> None:
    """Now and then, drop revocations of sessions whose tokens have all expired."""
    while True:
        try:
            await sweep_revoked(deps.js(), time.time())
        except Exception as exc:
            log.warning("revocation sweep failed", error=repr(exc))
        await asyncio.sleep(SWEEP_INTERVAL_S)
