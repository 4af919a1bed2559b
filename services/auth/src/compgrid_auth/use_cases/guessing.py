"""Password guessing: sign-ins and password changes share one throttle, and the owner of an
account under attack hears about it by mail, once per attack window."""

from __future__ import annotations

from compgrid_auth.adapters.repository import find_user_by_email
from compgrid_auth.use_cases.deps import Deps
from compgrid_runtime.errors import TooManyRequests
from compgrid_runtime.logs import get_logger
from compgrid_runtime.mail import Mail

log = get_logger(__name__)

THROTTLED = "too many attempts; try again later"


async def check_throttle(deps: Deps, email: str, address: str | None) -> None:
    """Count a password attempt; refuse it with 429 and Retry-After while throttled."""
    verdict = await deps.throttle.attempt(email, address)
    if verdict.attacked and await deps.throttle.first_warning(email):
        await _warn_owner(deps, email)
    if not verdict.allowed:
        raise TooManyRequests(
            THROTTLED, code="too_many_attempts", retry_after_s=verdict.retry_after_s
        )


async def _warn_owner(deps: Deps, email: str) -> None:
    async with deps.uow() as uow:
        user = await find_user_by_email(uow.session, email)
    if user is None or user.status != "active":
        return  # nobody to tell; an unknown address is throttled all the same
    try:
        await deps.mailer.send(_warning(deps, user.email))
    except Exception as exc:  # the refusal must not depend on the mail server
        log.warning("could not mail an attack warning", error=repr(exc))


def _warning(deps: Deps, email: str) -> Mail:
    return Mail(
        to=(email,),
        subject="Someone is trying to sign in to your CompGrid account",
        text=(
            "Several sign-ins to your CompGrid account failed with a wrong password just now.\n"
            "They are being slowed down; you can still sign in as usual.\n\n"
            "If this was not you, choose a new, strong password: "
            f"{deps.settings.public_url}/reset-password\n"
        ),
    )
