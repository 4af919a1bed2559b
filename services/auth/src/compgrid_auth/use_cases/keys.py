"""Signing keys at start-up and on rotation, and the first admin account."""

from __future__ import annotations

from sqlalchemy import any_, literal, select, text

from compgrid_auth.adapters.keys import publish_disabled, publish_jwks
from compgrid_auth.adapters.tables import user_account
from compgrid_auth.use_cases.audit import record
from compgrid_auth.use_cases.deps import Deps
from compgrid_auth.use_cases.users import insert_user
from compgrid_events.auth import Role
from compgrid_runtime.access import require_role
from compgrid_runtime.logs import get_logger
from compgrid_runtime.rpc import Caller
from compgrid_runtime.tokens import KeyWatcher, TokenVerifier

log = get_logger(__name__)


async def load_keys(deps: Deps) -> None:
    """Load (or create) the signing keys and publish the JWKS and disabled accounts."""
    async with deps.uow() as uow:
        await deps.signer.load(uow.session)
        await uow.commit()
        disabled = (
            (
                await uow.session.execute(
                    select(user_account.c.id).where(user_account.c.status == "disabled")
                )
            )
            .scalars()
            .all()
        )
    await publish_jwks(deps.js(), deps.signer)
    for user_id in disabled:
        await publish_disabled(deps.js(), user_id, True)


async def rotate_keys(deps: Deps, caller: Caller, body: object) -> dict[str, object]:
    """Start signing with a new key; old keys verify until their tokens expire (admins)."""
    require_role(caller.require())
    async with deps.uow() as uow:
        # One rotation at a time across auth processes, each starting from the stored keys.
        await uow.session.execute(text("SELECT pg_advisory_xact_lock(hashtext('auth.keys'))"))
        await deps.signer.load(uow.session)
        kid = await deps.signer.rotate(uow.session)
        await record(uow, caller, "keys.rotate", "signing_key", kid)
        await uow.commit()
    await publish_jwks(deps.js(), deps.signer)
    return {"kid": kid, "keys": [k["kid"] for k in deps.signer.jwks()["keys"]]}


async def follow_rotations(deps: Deps, watcher: KeyWatcher, verifier: TokenVerifier) -> None:
    """Sign with the newest key when another auth process rotated (it published a new JWKS)."""
    while True:
        await watcher.jwks_changed.wait()
        watcher.jwks_changed.clear()
        if verifier.key_ids - deps.signer.key_ids:
            async with deps.uow() as uow:
                await deps.signer.load(uow.session)
            log.info("signing keys reloaded after a rotation elsewhere")


async def ensure_first_admin(deps: Deps) -> None:
    """Create the admin from COMPGRID_ADMIN_EMAIL/PASSWORD when no admin exists yet."""
    settings = deps.settings
    if not (settings.admin_email and settings.admin_password):
        return
    async with deps.uow() as uow:
        query = (
            select(user_account.c.id).where(literal("admin") == any_(user_account.c.roles)).limit(1)
        )
        if (await uow.session.execute(query)).first() is not None:
            return
        await insert_user(
            deps,
            uow,
            Caller(None, "bootstrap"),
            email=settings.admin_email,
            display_name="Administrator",
            password=settings.admin_password.get_secret_value(),
            roles=(Role.ADMIN,),
        )
        await uow.commit()
    log.info("first admin created", email=settings.admin_email)
