"""The ports every auth use case gets, built once in ``bootstrap.py``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nats.js import JetStreamContext

from compgrid_auth.adapters.hashing import PasswordHasher
from compgrid_auth.adapters.keys import TokenSigner
from compgrid_auth.adapters.throttle import LoginThrottle
from compgrid_auth.config import Settings
from compgrid_runtime.mail import Mailer
from compgrid_runtime.uow import UnitOfWork


@dataclass
class Deps:
    """Unit of work, hashing, throttling, mail, signing and the bus."""

    uow: Callable[[], UnitOfWork]
    hasher: PasswordHasher
    throttle: LoginThrottle
    mailer: Mailer
    signer: TokenSigner
    js: Callable[[], JetStreamContext]
    settings: Settings
