"""Composition root of the billing service: builds the process from settings and ports."""

from __future__ import annotations

from compgrid_billing.adapters.tables import metadata
from compgrid_billing.adapters.webhooks import WebhookSender
from compgrid_billing.config import Settings
from compgrid_billing.entrypoints.consumers import register_consumers
from compgrid_billing.entrypoints.rpc import register_routes
from compgrid_billing.use_cases.delivery import deliver_forever
from compgrid_billing.use_cases.deps import Deps
from compgrid_billing.use_cases.invoicing import schedule_forever
from compgrid_billing.use_cases.upkeep import upkeep_forever
from compgrid_runtime.app import ServiceApp
from compgrid_runtime.mail import Mailer, SmtpMailer, SmtpSettings


def bootstrap(settings: Settings | None = None) -> ServiceApp:
    """Return the billing service process, ready to ``run()``."""
    return build(settings or Settings())[0]


def build(settings: Settings, *, mailer: Mailer | None = None) -> tuple[ServiceApp, Deps]:
    """Return the process and the ports its use cases use."""
    app = ServiceApp(settings, metadata)
    deps = Deps(
        uow=app.unit_of_work,
        settings=settings,
        mailer=mailer or SmtpMailer(SmtpSettings()),
        webhooks=WebhookSender(
            timeout_s=settings.webhook_timeout_s,
            allow_internal=settings.internal_webhooks_allowed,
        ),
    )
    register_consumers(app.consumers, deps)
    register_routes(app.rpc, deps)

    async def rate(_: ServiceApp) -> None:
        await upkeep_forever(deps)

    async def deliver(_: ServiceApp) -> None:
        await deliver_forever(deps)

    async def schedule(_: ServiceApp) -> None:
        await schedule_forever(deps)

    app.background.extend([rate, deliver])
    if settings.monthly_run:
        app.background.append(schedule)
    return app, deps
