"""Composition root of the auth service: builds the process from settings and ports."""

from __future__ import annotations

from datetime import timedelta
from functools import partial

from redis.asyncio import Redis

from compgrid_auth.adapters.hashing import PasswordHasher
from compgrid_auth.adapters.keys import TokenSigner
from compgrid_auth.adapters.tables import metadata
from compgrid_auth.adapters.throttle import LoginThrottle
from compgrid_auth.config import Settings
from compgrid_auth.entrypoints.consumers import register_consumers
from compgrid_auth.entrypoints.rpc import register_routes
from compgrid_auth.use_cases.access import sweep_revocations
from compgrid_auth.use_cases.deps import Deps
from compgrid_auth.use_cases.keys import ensure_first_admin, follow_rotations, load_keys
from compgrid_runtime.app import ServiceApp
from compgrid_runtime.mail import Mailer, SmtpMailer, SmtpSettings


def bootstrap(settings: Settings | None = None) -> ServiceApp:
    """Return the auth service process, ready to ``run()``."""
    return build(settings or Settings())[0]


def build(settings: Settings, *, mailer: Mailer | None = None) -> tuple[ServiceApp, Deps]:
    """Return the process and the ports its use cases use (tests pass another mailer)."""
    app = ServiceApp(settings, metadata)
    deps = Deps(
        uow=app.unit_of_work,
        hasher=PasswordHasher(),
        throttle=LoginThrottle(Redis.from_url(settings.redis_url), settings.redis_prefix),
        mailer=mailer or SmtpMailer(SmtpSettings()),
        signer=TokenSigner(
            settings.secret_key.get_secret_value(), timedelta(seconds=settings.access_ttl_s)
        ),
        js=lambda: app.js,
        settings=settings,
    )
    register_routes(app.rpc, deps)
    register_consumers(app.consumers, deps)

    async def prepare(_: ServiceApp) -> None:
        await load_keys(deps)
        await ensure_first_admin(deps)

    async def follow(app: ServiceApp) -> None:
        await follow_rotations(deps, app.keys, app.verifier)

    app.on_start.append(prepare)
    app.background += [follow, partial(sweep_revocations, deps)]
    return app, deps
