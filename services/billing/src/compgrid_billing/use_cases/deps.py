"""The ports every billing use case gets, built once in ``bootstrap.py``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from compgrid_billing.adapters.webhooks import WebhookSender
from compgrid_billing.config import Settings
from compgrid_runtime.mail import Mailer
from compgrid_runtime.uow import UnitOfWork


@dataclass
class Deps:
    """Unit of work, settings, the mailer and the webhook sender."""

    uow: Callable[[], UnitOfWork]
    settings: Settings
    mailer: Mailer
    webhooks: WebhookSender
